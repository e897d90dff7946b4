"""The doctor's probes of what is not a device: the profile, the encoders that really open,
the onnxruntime providers of a real session, the disk, and the sink."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

from capsight_edge.devices import DeviceFactory
from capsight_edge.doctor.report import FAIL, PASS, SKIP, WARN, Check
from capsight_edge.profile.schema import Profile


def probe_profile(profile: Profile, factory: DeviceFactory) -> list[Check]:
    return [Check("profile", PASS, f"{profile.name} ({profile.source_path}) is valid")]


def probe_encoders(profile: Profile, factory: DeviceFactory) -> list[Check]:
    from capsight_edge.recorder.probe import probe_encoder

    checks: list[Check] = []
    chosen = None
    for name in profile.encoder.preference:
        result = probe_encoder(name)
        if result.opens and chosen is None:
            chosen = name
            checks.append(
                Check(
                    f"encoder {name}", PASS, f"{result.reason}; selected", duration_s=result.seconds
                )
            )
        elif result.opens:
            checks.append(
                Check(
                    f"encoder {name}", PASS, f"{result.reason}; fallback", duration_s=result.seconds
                )
            )
        else:
            checks.append(Check(f"encoder {name}", SKIP, result.reason, duration_s=result.seconds))
    if chosen is None:
        checks.append(
            Check(
                "encoder",
                FAIL,
                "no encoder in encoder.preference opens here",
                "add 'libx264' to encoder.preference as the CPU fallback",
                required=True,
            )
        )
    return checks


def probe_model_runtime(profile: Profile, factory: DeviceFactory) -> list[Check]:
    from capsight_edge.runtime.providers import probe_providers

    requested = profile.model.providers
    result = probe_providers(requested)
    detail = (
        f"requested {', '.join(requested)}; session runs on {', '.join(result.active) or 'nothing'}"
    )
    if not result.active:
        from capsight_edge.runtime.providers import PROBE_MODEL

        if "not installed" in result.error:
            remedy = "pip install 'capsight[edge]' (CPU) or 'capsight[gpu]' (CUDA)"
        elif not PROBE_MODEL.is_file():
            remedy = f"reinstall capsight: its probe model {PROBE_MODEL.name} is missing"
        else:
            remedy = "the runtime is installed but cannot run the probe model: see DETAIL"
        return [
            Check(
                "onnxruntime",
                FAIL,
                f"{detail}: {result.error}",
                remedy,
                required=True,
                duration_s=result.seconds,
            )
        ]
    if result.active[0] != requested[0]:
        return [
            Check(
                "onnxruntime",
                WARN,
                detail + f" (available: {', '.join(result.available)})",
                f"{requested[0]} is not usable here: install its runtime, or put the "
                "provider you have first",
                duration_s=result.seconds,
            )
        ]
    return [Check("onnxruntime", PASS, detail, duration_s=result.seconds), *_model_checks(profile)]


def _model_checks(profile: Profile) -> list[Check]:
    """The model registry's trust root, and the model the cart would run (loaded, checked
    against its card and self-tested, as at every start)."""
    import os
    import time

    m = profile.model
    if not m.registry_url:
        return []
    start = time.perf_counter()
    if not m.trust_root:
        return [
            Check(
                "model trust root",
                FAIL,
                f"{m.registry_url} is set but no trust root",
                "set [model] trust_root to the registry's 1.root.json (from the ML team)",
            )
        ]
    try:
        from tuf.api.metadata import Metadata, Root

        root = Metadata[Root].from_file(os.path.expanduser(m.trust_root))
        signers = len(root.signed.roles["targets"].keyids)
        checks = [
            Check(
                "model trust root",
                PASS,
                f"{m.trust_root}: root v{root.signed.version}, expires "
                f"{root.signed.expires:%Y-%m-%d}, {signers} key(s) for targets",
                duration_s=time.perf_counter() - start,
            )
        ]
    except Exception as exc:
        return [
            Check(
                "model trust root",
                FAIL,
                f"{m.trust_root}: not a TUF root: {exc}"[:300],
                "copy the registry's metadata/1.root.json here again",
            )
        ]
    from capsight_edge.runtime.models import runtime_from_profile

    try:
        rt = runtime_from_profile(profile, os.path.expanduser(profile.storage.data_dir))
    except Exception as exc:
        return [*checks, Check("model", WARN, str(exc)[:300], "see DETAIL")]
    if not rt.version:
        checks.append(Check("model", WARN, "no model installed yet", "capsight model pull"))
    else:
        cur = rt.current or {}
        checks.append(
            Check(
                "model",
                PASS,
                f"{rt.version} loads, matches its card and passes its self-test on "
                f"{', '.join(cur.get('providers', []))}",
                duration_s=time.perf_counter() - start,
            )
        )
    return checks


def probe_disk(profile: Profile, factory: DeviceFactory) -> list[Check]:
    return [disk_check(profile)]


def probe_sink(profile: Profile, factory: DeviceFactory) -> list[Check]:
    """The sink answers its tus endpoint, and (with a token file) accepts this device's token."""
    up = profile.upload
    if not up.sink_url:
        return [Check("sink", PASS, "no sink configured: captures stay on the cart")]
    token = ""
    if up.token_file:
        path = Path(os.path.expanduser(up.token_file))
        if not path.is_file():
            return [
                Check(
                    "sink token",
                    FAIL,
                    f"token file {up.token_file} not found",
                    "run `capsight-sink device add NAME` and store the token there",
                )
            ]
        token = path.read_text().strip()
    try:
        import httpx

        from capsight_edge.uploader.progress import RetryLater, SinkMisconfigured, TokenRefused
        from capsight_edge.uploader.sinkside import SinkClient
    except ImportError as exc:
        return [Check("sink", FAIL, f"httpx missing: {exc}", "pip install 'capsight[edge]'")]

    async def discover() -> tuple[str, str]:
        async with httpx.AsyncClient(timeout=3.0) as client:
            sink = SinkClient(client, up.sink_url, token)
            caps = await sink.discover()
            return sink.endpoint, caps.versions[0]

    start = time.perf_counter()
    try:
        endpoint, version = asyncio.run(discover())
    except RetryLater as exc:  # a cart off the network queues its captures meanwhile
        return [
            Check(
                "sink",
                WARN,
                f"{up.sink_url} unreachable: {exc}",
                "check the network; captures queue on the cart meanwhile",
            )
        ]
    except TokenRefused as exc:
        return [
            Check("sink", PASS, f"{up.sink_url} answered"),
            Check(
                "sink token",
                FAIL,
                f"token refused ({exc})",
                "ask for a new token: `capsight-sink device add NAME` on the sink",
            ),
        ]
    except SinkMisconfigured as exc:
        return [
            Check(
                "sink",
                FAIL,
                str(exc),
                "set upload.sink_url to the sink's base URL (http://HOST:PORT) or its tus "
                "endpoint (http://HOST:PORT/files/)",
            )
        ]
    ms = 1000 * (time.perf_counter() - start)
    checks = [Check("sink", PASS, f"tus {version} at {endpoint}, answered in {ms:.0f} ms")]
    if token:
        checks.append(Check("sink token", PASS, "token accepted"))
    return checks


def disk_check(profile: Profile) -> Check:
    st = profile.storage
    folder = Path(os.path.expanduser(st.data_dir))
    probe_at = folder
    while not probe_at.exists() and probe_at != probe_at.parent:
        probe_at = probe_at.parent
    usage = shutil.disk_usage(probe_at)
    used_pct = 100.0 * (usage.total - usage.free) / usage.total
    free_gib = usage.free / 2**30
    detail = (
        f"{folder}: {used_pct:.1f}% used, {free_gib:.1f} GiB free "
        f"(pause at {st.high_watermark_pct:g}% or < {st.min_free_bytes / 2**20:.0f} MiB)"
    )
    if used_pct >= st.high_watermark_pct or usage.free < st.min_free_bytes:
        return Check(
            "disk",
            FAIL,
            detail,
            "free space or lower the watermarks: capture would pause at once",
            required=True,
        )
    if used_pct >= st.low_watermark_pct:
        return Check(
            "disk", WARN, detail, "disk is between the watermarks; capture will pause soon"
        )
    if not folder.exists():
        return Check("disk", PASS, detail + "; folder will be created on first run")
    if not os.access(folder, os.W_OK):
        return Check(
            "disk",
            FAIL,
            detail + "; folder is not writable",
            f"chown/chmod {folder} for the capsight user",
            required=True,
        )
    return Check("disk", PASS, detail)
