"""firmware_bridge: the host side of the cart MCU link, and a simulator of the MCU."""
