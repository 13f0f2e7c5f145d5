# Defaults of the debian-minimal element; a recipe's environment wins.
export DISTRO_NAME=debian
export DIB_RELEASE=${DIB_RELEASE:-bookworm}
export DIB_INIT_SYSTEM=${DIB_INIT_SYSTEM:-systemd}
export DIB_DISTRIBUTION_MIRROR=${DIB_DISTRIBUTION_MIRROR:-http://deb.debian.org/debian}
# Comma-separated, as in diskimage-builder.
export DIB_DEBIAN_COMPONENTS=${DIB_DEBIAN_COMPONENTS:-main}
# mmdebstrap variant: minbase (Priority: required + apt) or apt (Essential + apt).
export DIB_MMDEBSTRAP_VARIANT=${DIB_MMDEBSTRAP_VARIANT:-minbase}
