"""GS1 identities: check digits, UPC-E expansion, element strings, HRI, Digital Link."""

from __future__ import annotations

import pytest

from capsight_edge.camera.gs1 import (
    GS,
    GS1Error,
    check_digit_ok,
    expand_upce,
    gtin14,
    identify,
    parse_digital_link,
    parse_element_string,
    parse_hri,
    same_gtin,
)


def test_check_digits_and_gtin14() -> None:
    assert check_digit_ok("4006381333931") and not check_digit_ok("4006381333932")
    assert gtin14("4006381333931") == "04006381333931"
    assert gtin14("036000291452") == "00036000291452"  # UPC-A
    assert gtin14("96385074") == "00000096385074"  # EAN-8
    with pytest.raises(GS1Error, match="check digit"):
        gtin14("4006381333932")


@pytest.mark.parametrize(
    ("upce", "upca"),
    [
        ("01234565", "012345000065"),  # last digit 5: manufacturer 5 digits
        ("00123457", "001234000057"),  # 7
        ("01234531", "012300000451"),  # 3
        ("04252614", "042100005264"),  # 1: manufacturer xx1, item 526
        ("01234044", "012340000004"),  # 4: manufacturer 4 digits, item 1 digit
    ],
)
def test_upce_zero_suppression(upce: str, upca: str) -> None:
    assert expand_upce(upce) == upca


def test_upce_and_upca_are_the_same_item() -> None:
    assert same_gtin("01234565", "0012345000065")
    assert same_gtin("012345000065", "00012345000065")
    assert not same_gtin("012345000065", "00012345000072")


def test_element_string_with_fixed_and_variable_ais() -> None:
    text = (
        f"]d201095040000591012112345678p901{GS}101234567p{GS}171411208200http://www.gs1.org/demo/"
    )
    data = parse_element_string(text)
    assert data.ais == {
        "01": "09504000059101",
        "21": "12345678p901",
        "10": "1234567p",
        "17": "141120",
        "8200": "http://www.gs1.org/demo/",
    }
    assert data.named() == {
        "gtin": "09504000059101",
        "serial": "12345678p901",
        "batch": "1234567p",
        "expiry": "2014-11-20",
    }


def test_net_weight_and_end_of_month_expiry() -> None:
    data = parse_element_string("0109506000134352310300125017250200")
    assert data.net_weight_kg == pytest.approx(1.25)
    assert data.expiry == "2025-02-28"  # day 00: the month's last day


@pytest.mark.parametrize(
    "bad",
    [
        "0109506000134353",  # GTIN check digit
        "01095060001343",  # too short
        "9",  # no AI
        "0109506000134352" + "10" + "A" * 91,  # variable AI over its length
        "01095060001343521713250",  # month 13
        "0109506000134352" + "0109506000134352",  # an AI twice
    ],
)
def test_bad_element_strings_are_refused(bad: str) -> None:
    with pytest.raises(GS1Error):
        parse_element_string(bad)


def test_hri_text() -> None:
    data = parse_hri("(01)09506000134352(3102)000750(10)LOT 7")
    assert data.gtin == "09506000134352" and data.net_weight_kg == pytest.approx(7.5)
    with pytest.raises(GS1Error):
        parse_hri("(01)09506000134352 trailing")


def test_digital_link() -> None:
    data = parse_digital_link(
        "https://id.example.com/shop/01/09506000134352/10/AB%2F12/21/S1?17=271231&linkType=all"
    )
    assert data is not None
    assert data.ais == {"01": "09506000134352", "10": "AB/12", "21": "S1", "17": "271231"}
    assert parse_digital_link("https://example.com/about") is None
    assert parse_digital_link("ftp://id.example.com/01/09506000134352") is None
    assert parse_digital_link("https://id.example.com/01/9506000134352")  # GTIN-13 padded
    with pytest.raises(GS1Error):
        parse_digital_link("https://id.example.com/01/09506000134353")


def test_identify_each_kind() -> None:
    assert identify("EAN-13", "0036000291452").symbology == "UPC-A"
    assert identify("UPC-E", "01234565").gtin == "00012345000065"
    assert identify("UPC-E", "0012345000065").gtin == "00012345000065"  # zxing's expanded form
    ean = identify("EAN-13", "9780735200449", addon="51299")
    assert ean.gtin == "09780735200449" and ean.addon == "51299"
    assert identify("DataBar", "0104412345678909").gtin == "04412345678909"
    assert identify("DataBarExpanded", "01095060001343523103001250").ais["3103"] == "001250"
    assert identify("QRCode", "https://id.gs1.org/01/09506000134352").gtin == "09506000134352"
    plain = identify("QRCode", "https://example.com/x")
    assert plain.gtin is None and plain.ais == {}
    assert identify("Code128", "ABC-123").gtin is None
    gs1_128 = identify("Code128", "0109506000134352", gs1=True)
    assert gs1_128.gtin == "09506000134352"
    with pytest.raises(GS1Error):
        identify("EAN-13", "9780735200448")  # a read with a bad check digit is not a read
    with pytest.raises(GS1Error):
        identify("DataBar", "0104412345678908")
