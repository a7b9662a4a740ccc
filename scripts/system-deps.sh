#!/usr/bin/env bash
# Install the Debian packages Sendense and its tests need, only those missing.
set -euo pipefail

packages=(
  qemu-utils        # qemu-img, qemu-nbd
  nbdkit            # NBD server plugins (vddk, tests)
  libnbd-bin        # nbdcopy, nbdinfo: baselines in the bench
  python3-libnbd    # NBD client bindings (Debian only)
  python3-venv
  postgresql        # the database tests run on PostgreSQL too
  iproute2          # ss, ip netns
  golang-go         # builds the vCenter simulator for the tests (offline)
  golang-github-vmware-govmomi-dev  # vcsim's source: the simulator package
  procps            # pgrep
  openssh-server    # the hub's private tunnel sshd
  openssh-client    # the node's tunnel
  chromium          # the console's browser tests (driven by Playwright)
  fonts-dejavu-core # a font for its pages and screenshots
  python3-guestfs   # file-level restore: libguestfs' appliance reads guest filesystems
  libguestfs-xfs    # ...XFS in the appliance (only recommended by libguestfs)
  linux-image-amd64 # ...the appliance's kernel: supermin builds it from the host's
  fdisk             # sfdisk: the file-restore tests' guest partition tables
  cryptsetup-bin    # ...and their LUKS volume
)

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
echo "installing Debian packages: ${missing[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
