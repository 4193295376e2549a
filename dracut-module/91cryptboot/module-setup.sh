#!/bin/bash
# shellcheck disable=SC2154  # initdir, moddir, hostonly, ... are set by dracut
# dracut module "cryptboot": cryptboot unlocks the encrypted volumes instead of dracut's "crypt".
#
# Sourced by dracut at build time. Supported: the classic (non-systemd) dracut initrd, whose
# init.sh runs the initqueue; build with
#     dracut --add cryptboot --omit "crypt systemd systemd-initrd dracut-systemd" ...
# The volumes come from rd.luks.* on the kernel command line and from /etc/crypttab in the
# image; see docs/hooks.md.
#
# Build-time settings (environment or a dracut.conf.d file):
#   CRYPTBOOT          the cryptboot command that lists its boot files (default: from PATH)
#   cryptboot_crypttab or CRYPTBOOT_CRYPTTAB: the crypttab to pick lines from (/etc/crypttab)

# The cryptboot command used at build time: $CRYPTBOOT, else the one on PATH or in /usr.
cryptboot_command() {
    local c
    for c in "${CRYPTBOOT:-}" "$(command -v cryptboot 2> /dev/null)" \
        /usr/bin/cryptboot /usr/local/bin/cryptboot; do
        if [[ -n $c && -x $c ]]; then
            printf '%s\n' "$c"
            return 0
        fi
    done
    return 1
}

cryptboot_crypttab_file() {
    printf '%s\n' "${cryptboot_crypttab:-${CRYPTBOOT_CRYPTTAB:-${dracutsysrootdir:-}/etc/crypttab}}"
}

# True when the crypttab has at least one entry.
cryptboot_crypttab_has_entries() {
    local tab
    tab=$(cryptboot_crypttab_file)
    [[ -f $tab ]] && grep -q -v -E '^[[:space:]]*(#|$)' "$tab"
}

# called by dracut: include only when asked for (--add cryptboot, add_dracutmodules), or in
# host-only mode when crypttab has entries and dracut's crypt module is omitted.
check() {
    require_binaries cryptsetup || return 1
    if ! cryptboot_command > /dev/null; then
        dinfo "dracut module 'cryptboot' will not be installed: no cryptboot command" \
            "(install cryptboot or set CRYPTBOOT=/path/to/cryptboot)"
        return 1
    fi
    if [[ $hostonly ]] && [[ " $omit_dracutmodules " == *" crypt "* ]] \
        && cryptboot_crypttab_has_entries; then
        return 0
    fi
    return 255
}

# called by dracut: dm brings dmsetup and the device-mapper udev rules (/dev/mapper links),
# rootfs-block mounts root= once the mapping exists.
depends() {
    echo "dm rootfs-block"
    return 0
}

# called by dracut: dm-crypt, the kernel crypto API for userspace (LUKS keyslots), ciphers.
installkernel() {
    instmods dm_crypt drbg af_alg algif_skcipher algif_hash
    if [[ $hostonly ]]; then
        # the ciphers of the crypt targets active on this host, e.g. aes-xts-plain64
        local _name _start _len _target _cipher _rest
        local -a _parts
        while read -r _name _start _len _target _cipher _rest; do
            [[ $_target == crypt ]] || continue
            IFS='-:' read -ra _parts <<< "$_cipher"
            hostonly='' instmods "${_parts[@]/#/crypto-}" "crypto-$_cipher"
        done < <(dmsetup table 2> /dev/null)
    else
        hostonly='' instmods "=crypto"
    fi
    return 0
}

# Refuse, naming the fix, when another module would ask for the same volumes (crypt) or when
# the initrd is systemd-based (its console belongs to systemd; init.sh's initqueue is not used).
cryptboot_refuse_conflicts() {
    local m omit=""
    if dracut_module_included "crypt"; then
        dfatal "cryptboot: dracut's 'crypt' module is included too; both would ask for the" \
            "same volumes (rd.luks.*, crypttab)."
        omit="crypt"
    fi
    for m in systemd systemd-initrd dracut-systemd; do
        if dracut_module_included "$m"; then
            dfatal "cryptboot: supports only the non-systemd dracut initrd, but module '$m'" \
                "is included."
            omit="${omit:+$omit }systemd systemd-initrd dracut-systemd"
            break
        fi
    done
    if [[ -n $omit ]]; then
        dfatal "cryptboot: rebuild with --omit \"$omit\" (or omit_dracutmodules+=\" $omit \"" \
            "in /etc/dracut.conf.d/)."
        return 1
    fi
    return 0
}

# Copy the interpreter, its libraries, the stdlib subset, cryptboot and pyudev, as listed by
# "cryptboot mkinitramfs --list-python" (SRC<TAB>DEST[<TAB>MODE] lines): one source of truth
# for every builder. Then make sure /usr/bin/cryptboot exists in the image.
cryptboot_install_python() {
    local cmd list src dest mode python=""
    cmd=$(cryptboot_command) || {
        dfatal "cryptboot: no cryptboot command (install cryptboot or set CRYPTBOOT=)"
        return 1
    }
    if ! list=$("$cmd" mkinitramfs --list-python); then
        dfatal "cryptboot: '$cmd mkinitramfs --list-python' failed"
        return 1
    fi
    if [[ -z $list ]]; then
        dfatal "cryptboot: '$cmd mkinitramfs --list-python' listed no files"
        return 1
    fi
    while IFS=$'\t' read -r src dest mode; do
        [[ -n $src ]] || continue
        dest=${dest:-$src}
        if ! inst_simple "$src" "$dest"; then
            dfatal "cryptboot: could not install $src as $dest"
            return 1
        fi
        # an optional third column is the mode; the launcher must be executable in any case
        [[ $dest == /usr/bin/cryptboot && -z $mode ]] && mode=0755
        [[ -z $mode ]] || chmod "$mode" "$initdir$dest"
        case ${dest##*/} in
            python3 | python3.[0-9]*) [[ -n $python ]] || python=$dest ;;
        esac
    done <<< "$list"
    if [[ ! -e $initdir/usr/bin/cryptboot ]]; then
        if [[ -z $python ]]; then
            dfatal "cryptboot: the --list-python output has no python3 interpreter"
            return 1
        fi
        mkdir -p "$initdir/usr/bin"
        printf '#!/bin/sh\nexec %s -m cryptboot "$@"\n' "$python" > "$initdir/usr/bin/cryptboot"
        chmod 0755 "$initdir/usr/bin/cryptboot"
    fi
    return 0
}

# Resolve a crypttab device field (UUID=, PARTUUID=, LABEL=, ID=, path) to a path.
cryptboot_dev_path() {
    case $1 in
        UUID=*) printf '/dev/disk/by-uuid/%s\n' "${1#UUID=}" ;;
        PARTUUID=*) printf '/dev/disk/by-partuuid/%s\n' "${1#PARTUUID=}" ;;
        LABEL=*) printf '/dev/disk/by-label/%s\n' "${1#LABEL=}" ;;
        ID=*) printf '/dev/disk/by-id/%s\n' "${1#ID=}" ;;
        *) printf '%s\n' "$1" ;;
    esac
}

# Print the crypttab lines that belong in the image: those with the "initramfs" (Debian) or
# "force" (dracut) option, and in host-only mode those whose device backs a host filesystem.
# Lines are copied unchanged, except that "force", a build-time word, is dropped. Keyfiles
# they name (absolute paths) are installed at the same path; dracut writes the image mode 0600.
cryptboot_select_crypttab() {
    local tab=$1 line name dev key opts keep hdev o
    local -a kept
    while IFS= read -r line || [[ -n $line ]]; do
        read -r name dev key opts _ <<< "$line"
        [[ -n $name && $name != \#* && -n $dev ]] || continue
        keep=""
        [[ ,$opts, == *,initramfs,* || ,$opts, == *,force,* ]] && keep=1
        if [[ -z $keep && $hostonly ]]; then
            for hdev in "${!host_fs_types[@]}"; do
                [[ ${host_fs_types[$hdev]} == crypto_LUKS ]] || continue
                if [[ $hdev -ef $(cryptboot_dev_path "$dev") ]]; then
                    keep=1
                    break
                fi
            done
        fi
        [[ -n $keep ]] || continue
        if [[ ,$opts, == *,force,* ]]; then
            kept=()
            for o in ${opts//,/ }; do
                [[ $o == force ]] || kept+=("$o")
            done
            opts=$(IFS=,; printf '%s' "${kept[*]}")
            line="$name $dev $key${opts:+ $opts}"
        fi
        printf '%s\n' "$line"
        case $key in
            "" | - | none | /dev/* | *:*) ;;
            /*)
                if [[ ! -f $key ]]; then
                    dfatal "cryptboot: $tab: entry '$name' names keyfile $key, which does not" \
                        "exist"
                    return 1
                fi
                if ! inst_simple "$key" "$key"; then
                    dfatal "cryptboot: $tab: could not install keyfile $key of entry '$name'"
                    return 1
                fi
                ;;
        esac
    done < "$tab"
}

# called by dracut
install() {
    cryptboot_refuse_conflicts || exit 1
    inst_multiple cryptsetup
    cryptboot_install_python || exit 1

    local tab lines
    tab=$(cryptboot_crypttab_file)
    if [[ -f $tab ]]; then
        lines=$(cryptboot_select_crypttab "$tab") || exit 1
        if [[ -n $lines ]]; then
            printf '%s\n' "$lines" > "$initdir/etc/crypttab"
            chmod 0600 "$initdir/etc/crypttab"
            [[ $hostonly ]] && mark_hostonly /etc/crypttab
        fi
    fi

    inst_hook cmdline 30 "$moddir/cryptboot-cmdline.sh"
    inst_script "$moddir/cryptboot-unlock.sh" /sbin/cryptboot-unlock
    dracut_need_initqueue
}
