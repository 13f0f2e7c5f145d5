# Serial ports that get a login prompt (kiln extension; space-separated).
export DIB_SERIAL_CONSOLE_PORTS=${DIB_SERIAL_CONSOLE_PORTS:-ttyS0}
