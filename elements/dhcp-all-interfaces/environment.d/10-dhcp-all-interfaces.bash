# Seconds boot waits for a DHCP lease, as in diskimage-builder.
export DIB_DHCP_TIMEOUT=${DIB_DHCP_TIMEOUT:-30}
