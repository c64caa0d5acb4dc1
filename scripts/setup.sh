#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine: Debian packages, the venv
# (from /usr/bin/python3 so Debian's python3-guestfs is importable) and the
# offline Nix settings, exported through NIX_CONFIG rather than /etc/nix.
# Source it (". scripts/setup.sh") to get the environment in the caller.
set -euo pipefail

NIXSLAVE_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export NIXSLAVE_TOP

nixslave_packages=(
    libguestfs-tools python3-guestfs qemu-utils qemu-system-x86 linux-image-amd64
    nix-bin busybox-static systemd-container extlinux syslinux-common mtools
    dosfstools e2fsprogs libvirt-clients vde2 iproute2 iputils-ping python3-venv
    graphviz fdisk zstd cpio procps libxml2-utils skopeo umoci podman runc
    ovmf systemd-boot-efi binutils initramfs-tools
    virt-v2v libvirt-daemon libvirt-daemon-driver-qemu cryptsetup-bin gdisk
    libvirt-daemon-system python3-libvirt qemu-guest-agent
)

_sudo() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

nixslave_install_packages() {
    local missing=()
    for p in "${nixslave_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "setup: installing ${missing[*]}" >&2
        _sudo apt-get update -qq
        _sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${missing[@]}" >&2
    fi
    # The supermin appliance needs a readable kernel.
    _sudo chmod 0644 /boot/vmlinuz-* 2>/dev/null || true
}

nixslave_venv() {
    local venv="$NIXSLAVE_TOP/.venv"
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import guestfs' 2>/dev/null; then
        rm -rf "$venv"
        /usr/bin/python3 -m venv --system-site-packages "$venv"
    fi
    local stamp="$venv/.nixslave-installed"
    if [ ! -e "$stamp" ] || [ "$NIXSLAVE_TOP/pyproject.toml" -nt "$stamp" ]; then
        "$venv/bin/pip" install -q --upgrade pip >&2
        "$venv/bin/pip" install -q -e "$NIXSLAVE_TOP[test,dev,graph]" >&2
        touch "$stamp"
    fi
    export PATH="$venv/bin:$PATH"
}

nixslave_env() {
    export NIX_CONFIG=$'build-users-group =\nsandbox = false\nsubstituters =\nexperimental-features = nix-command'
    # Nested KVM is often unusable; nixslave probes it and falls back to TCG
    # itself. libguestfs reads these two variables, so set them only when the
    # probe says so.
    export LIBGUESTFS_BACKEND=direct
    if ! "$NIXSLAVE_TOP/.venv/bin/python" -m nixslave.runtime.accel --quiet; then
        export LIBGUESTFS_BACKEND_SETTINGS=force_tcg
    fi
}

nixslave_setup() {
    nixslave_install_packages
    nixslave_venv
    nixslave_env
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    nixslave_setup
    echo "setup: ready (venv at $NIXSLAVE_TOP/.venv)" >&2
fi
