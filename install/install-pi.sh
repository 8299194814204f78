#!/bin/bash
# Install (or remove) the edge-redeem terminal on Raspberry Pi OS / Debian 12: packages, the
# `redeem` system user, the venv in /opt/edge-redeem, the config, the data directory and
# the systemd units. Step by step: docs/installation.md.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: install-pi.sh [options]

  --wheel FILE          install this wheel instead of the checkout the script lives in
  --kiosk               also install Chromium and the kiosk screen (user unit)
  --camera              also enable redeem-camera.service (Pi camera module via rpicam-vid)
  --central URL         the central's https URL (written into a new config's [sync])
  --enroll-code CODE    enroll with the central now (`redeem enroll`, needs --central);
                        also read from REDEEM_ENROLL_CODE
  --fingerprint FP      expected trust anchor fingerprint (SHA256:...) for enrollment
  --store ID            refuse an enrollment code of another store
  --ca FILE             PEM bundle pinning the central's CA
  --no-start            enable the units but do not start them now
  --uninstall           stop and remove the units and /opt/edge-redeem; keeps
                        /etc/edge-redeem, /var/lib/edge-redeem (the journal!) and the
                        device key in /etc/credstore/edge-redeem
  --purge               with --uninstall: also delete config, data, device key, the
                        unit's drop-ins (redeem.service.d) and the user
  --dry-run             print every command instead of running it
  --prefix DIR          lay the files out under DIR (tests, image staging); implies
                        --no-apt --no-user --no-systemctl
  --no-apt              do not install Debian packages
  --no-user             do not create the user or change ownership
  --no-systemctl        do not run systemctl
  --no-pip              make the venv without pip and install nothing into it
  -h, --help            this text
USAGE
}

# Layout (relative to --prefix).
OPT=/opt/edge-redeem
VENV=$OPT/venv
ETC=/etc/edge-redeem
DATA=/var/lib/edge-redeem
UNITS=/etc/systemd/system
# Drop-ins of redeem.service: the operator's (`systemctl edit redeem`), removed by --purge.
DROP_INS=$UNITS/redeem.service.d
# The device key, passed to redeem.service with LoadCredential= (systemd/redeem.service).
CREDSTORE=/etc/credstore/edge-redeem
USER_UNITS=/etc/systemd/user
USER_NAME=redeem
GROUPS_WANTED=(video dialout plugdev gpio)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source_dir="$(dirname "$here")"

wheel="" kiosk=0 camera=0 central="" enroll_code="${REDEEM_ENROLL_CODE:-}" fingerprint=""
store="" ca="" start=1 uninstall=0 purge=0 dry_run=0 prefix=""
do_apt=1 do_user=1 do_systemctl=1 do_pip=1

die() {
    echo "install-pi.sh: $*" >&2
    exit 2
}

need_value() {
    [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --wheel) need_value "$@"; wheel="$2"; shift 2 ;;
        --kiosk) kiosk=1; shift ;;
        --camera) camera=1; shift ;;
        --central) need_value "$@"; central="$2"; shift 2 ;;
        --enroll-code) need_value "$@"; enroll_code="$2"; shift 2 ;;
        --fingerprint) need_value "$@"; fingerprint="$2"; shift 2 ;;
        --store) need_value "$@"; store="$2"; shift 2 ;;
        --ca) need_value "$@"; ca="$2"; shift 2 ;;
        --no-start) start=0; shift ;;
        --uninstall) uninstall=1; shift ;;
        --purge) purge=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        --prefix) need_value "$@"; prefix="${2%/}"; shift 2 ;;
        --no-apt) do_apt=0; shift ;;
        --no-user) do_user=0; shift ;;
        --no-systemctl) do_systemctl=0; shift ;;
        --no-pip) do_pip=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

if [[ -n "$prefix" ]]; then
    [[ "$prefix" == /* ]] || die "--prefix must be an absolute path"
    do_apt=0 do_user=0 do_systemctl=0
fi
if ((purge && !uninstall)); then
    die "--purge goes with --uninstall"
fi
if [[ -n "$enroll_code" && -z "$central" ]]; then
    die "--enroll-code needs --central URL"
fi
if [[ -n "$central" && "$central" != https://* && "$central" != http://127.* && "$central" != http://localhost* ]]; then
    die "--central must be an https:// URL"
fi
if [[ -n "$wheel" && ! -f "$wheel" ]]; then
    die "no wheel at $wheel"
fi
if ((!dry_run && (do_apt || do_user || do_systemctl))) && [[ "$(id -u)" != 0 ]]; then
    die "run as root (sudo $0 ...), or with --dry-run / --prefix"
fi

# Print a command, then run it unless --dry-run. Secrets never go through here.
run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if ((!dry_run)); then
        "$@"
    fi
}

systemctl_() {
    if ((do_systemctl)); then
        run systemctl "$@"
    fi
}

step() {
    printf '\n== %s\n' "$*"
}

install_packages() {
    ((do_apt)) || return 0
    step "Debian packages"
    local packages=(python3-venv libzbar0 curl)
    run apt-get update -q
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}"
    if ((kiosk)); then
        # Debian 12 and current Raspberry Pi OS call it chromium; older Pi OS images
        # chromium-browser.
        if ((dry_run)) || apt-cache show chromium >/dev/null 2>&1; then
            run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
        else
            run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium-browser
        fi
    fi
}

create_user() {
    ((do_user)) || return 0
    step "system user $USER_NAME"
    if ((dry_run)) || ! getent passwd "$USER_NAME" >/dev/null; then
        run useradd --system --user-group --home-dir "$DATA" --no-create-home \
            --shell /usr/sbin/nologin --comment "edge-redeem terminal" "$USER_NAME"
    fi
    local group wanted=()
    for group in "${GROUPS_WANTED[@]}"; do
        if getent group "$group" >/dev/null || { ((dry_run)) && [[ "$group" != gpio ]]; }; then
            wanted+=("$group")
        fi
    done
    if ((${#wanted[@]})); then
        run usermod --append --groups "$(IFS=,; echo "${wanted[*]}")" "$USER_NAME"
    fi
}

# install(1) with the owner only when users are managed (not under --prefix).
install_as() {
    local owner="$1" group="$2"
    shift 2
    if ((do_user)); then
        run install -o "$owner" -g "$group" "$@"
    else
        run install "$@"
    fi
}

install_software() {
    step "software in $prefix$OPT"
    run install -d -m 0755 "$prefix$OPT" "$prefix$OPT/bin" "$prefix$OPT/docs"
    if ((do_pip)); then
        run python3 -m venv --clear "$prefix$VENV"
        run "$prefix$VENV/bin/pip" install --quiet --upgrade pip
        if [[ -n "$wheel" ]]; then
            run "$prefix$VENV/bin/pip" install --quiet "$wheel"
        else
            [[ -f "$source_dir/pyproject.toml" ]] || die "no pyproject.toml in $source_dir; give --wheel"
            run "$prefix$VENV/bin/pip" install --quiet "$source_dir"
        fi
    else
        run python3 -m venv --clear --without-pip "$prefix$VENV"
    fi
    run install -m 0755 "$here/redeem-kiosk-browser" "$prefix$OPT/bin/redeem-kiosk-browser"
    local doc
    for doc in "$source_dir"/docs/*.md; do
        if [[ -e "$doc" ]]; then
            run install -m 0644 "$doc" "$prefix$OPT/docs/"
        fi
    done
}

install_config() {
    step "config $prefix$ETC and data $prefix$DATA"
    install_as root root -d -m 0755 "$prefix$ETC"
    local config="$prefix$ETC/terminal.toml"
    if [[ -e "$config" ]]; then
        echo "keeping the existing $config"
    else
        local central_line="# central = \"https://central.example\""
        if [[ -n "$central" ]]; then
            central_line="central = \"$central\""
        fi
        printf '+ write %q from %q\n' "$config" "$here/terminal.toml.example"
        if ((!dry_run)); then
            local tmp
            tmp="$(mktemp "$config.XXXXXX")"
            while IFS= read -r line || [[ -n "$line" ]]; do
                if [[ "$line" == "# central = "* ]]; then
                    line="$central_line"
                fi
                printf '%s\n' "$line"
            done <"$here/terminal.toml.example" >"$tmp"
            chmod 0640 "$tmp"
            if ((do_user)); then
                chown "root:$USER_NAME" "$tmp"
            fi
            mv "$tmp" "$config"
        fi
    fi
    if [[ -n "$ca" ]]; then
        install_as root "$USER_NAME" -m 0644 "$ca" "$prefix$ETC/central-ca.pem"
    fi
    install_as "$USER_NAME" "$USER_NAME" -d -m 0700 "$prefix$DATA"
}

install_units() {
    step "systemd units"
    run install -d -m 0755 "$prefix$UNITS" "$prefix$USER_UNITS"
    local unit
    for unit in redeem.service redeem-camera.service; do
        run install -m 0644 "$source_dir/systemd/$unit" "$prefix$UNITS/$unit"
    done
    if ((kiosk)); then
        run install -m 0644 "$source_dir/systemd/redeem-kiosk.service" \
            "$prefix$USER_UNITS/redeem-kiosk.service"
    fi
    systemctl_ daemon-reload
}

enroll() {
    [[ -n "$enroll_code" ]] || return 0
    step "enrollment with $central"
    systemctl_ stop redeem.service
    local args=(enroll --data "$prefix$DATA" --central "$central")
    if [[ -n "$fingerprint" ]]; then
        args+=(--fingerprint "$fingerprint")
    fi
    if [[ -n "$store" ]]; then
        args+=(--store "$store")
    fi
    if [[ -n "$ca" ]]; then
        args+=(--ca "$prefix$ETC/central-ca.pem")
    fi
    # The one-time code goes through the environment, not the command line (ps shows that).
    local as_user=()
    if ((do_user)); then
        as_user=(runuser -u "$USER_NAME" --)
    fi
    printf '+ REDEEM_ENROLL_CODE=<code>'
    printf ' %q' "${as_user[@]}" "$prefix$VENV/bin/redeem" "${args[@]}"
    printf '\n'
    if ((!dry_run)); then
        REDEEM_ENROLL_CODE="$enroll_code" "${as_user[@]}" "$prefix$VENV/bin/redeem" "${args[@]}"
    fi
}

# `redeem enroll` (as the redeem user) writes <data>/device.key; the key then moves to the
# credstore, root's alone, and reaches the daemon only as a systemd credential. A key in the
# data directory is always the newest (enrollment needs an empty data directory), so it
# replaces an older credential: re-enrollment and a hand-run `redeem enroll` both land here.
store_device_key() {
    local key="$prefix$DATA/device.key" store="$prefix$CREDSTORE"
    if [[ ! -e "$key" ]] && ! { ((dry_run)) && [[ -n "$enroll_code" ]]; }; then
        return 0
    fi
    step "device key to $store (systemd credential)"
    if [[ ! -d "$prefix/etc/credstore" ]]; then
        install_as root root -d -m 0700 "$prefix/etc/credstore"
    fi
    install_as root root -d -m 0700 "$store"
    # Copy, flush, rename, then delete: a power cut leaves one whole key, never none.
    install_as root root -m 0600 "$key" "$store/device-key.new"
    run sync "$store/device-key.new"
    run mv -f "$store/device-key.new" "$store/device-key"
    run sync "$store"
    run rm -f "$key"
}

enable_units() {
    step "enable and start"
    systemctl_ enable redeem.service
    if ((camera)); then
        systemctl_ enable redeem-camera.service
    fi
    if ((kiosk)); then
        systemctl_ --global enable redeem-kiosk.service
    fi
    if ((start)); then
        if ((camera)); then
            systemctl_ restart redeem-camera.service
        fi
        # Skipped by systemd (ConditionPathExists) until the terminal is enrolled.
        systemctl_ restart redeem.service
    fi
    if ((kiosk)); then
        echo "the kiosk screen starts with the desktop user's next login (enable autologin)"
    fi
    if [[ ! -e "$prefix$DATA/terminal.json" ]] && ((!dry_run)); then
        echo "not enrolled yet: redeem.service waits for"
        echo "  runuser -u $USER_NAME -- $VENV/bin/redeem enroll --data $DATA --central URL --code CODE"
        echo "then run this installer again: it moves the device key to $CREDSTORE"
    fi
}

uninstall_all() {
    step "remove edge-redeem"
    systemctl_ disable --now redeem.service redeem-camera.service
    systemctl_ --global disable redeem-kiosk.service
    run rm -f "$prefix$UNITS/redeem.service" "$prefix$UNITS/redeem-camera.service" \
        "$prefix$USER_UNITS/redeem-kiosk.service"
    systemctl_ daemon-reload
    run rm -rf "$prefix$OPT"
    if ((purge)); then
        run rm -rf "$prefix$ETC" "$prefix$DATA" "$prefix$CREDSTORE" "$prefix$DROP_INS"
        if ((do_user)) && { ((dry_run)) || getent passwd "$USER_NAME" >/dev/null; }; then
            run userdel "$USER_NAME"
        fi
    else
        echo "kept $prefix$ETC, $prefix$DATA and $prefix$CREDSTORE (config, journal, device key);"
        echo "--purge deletes them"
    fi
}

if ((uninstall)); then
    uninstall_all
    exit 0
fi
install_packages
create_user
install_software
install_config
install_units
enroll
store_device_key
enable_units
