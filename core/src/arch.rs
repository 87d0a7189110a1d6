//! dpkg's architecture names and wildcards (`Dpkg::Arch::debarch_is`):
//! every Debian architecture is a tuple ABI-LIBC-OS-CPU, and a wildcard
//! such as `any-arm` or `linux-any` matches the architectures whose tuple
//! it matches, so `any-arm` matches `armhf` and `armel`. The tables are
//! dpkg's `tupletable` and `cputable` (dpkg 1.21, the CPU names).

/// dpkg's `tupletable`: tuple, architecture; `<cpu>` stands for any CPU of
/// [`CPUS`].
const TUPLES: &[(&str, &str)] = &[
    ("eabi-uclibc-linux-arm", "uclibc-linux-armel"),
    ("base-uclibc-linux-<cpu>", "uclibc-linux-<cpu>"),
    ("eabihf-musl-linux-arm", "musl-linux-armhf"),
    ("base-musl-linux-<cpu>", "musl-linux-<cpu>"),
    ("ilp32-gnu-linux-arm64", "arm64ilp32"),
    ("eabihf-gnu-linux-arm", "armhf"),
    ("eabi-gnu-linux-arm", "armel"),
    ("abin32-gnu-linux-mips64r6el", "mipsn32r6el"),
    ("abin32-gnu-linux-mips64r6", "mipsn32r6"),
    ("abin32-gnu-linux-mips64el", "mipsn32el"),
    ("abin32-gnu-linux-mips64", "mipsn32"),
    ("abi64-gnu-linux-mips64r6el", "mips64r6el"),
    ("abi64-gnu-linux-mips64r6", "mips64r6"),
    ("abi64-gnu-linux-mips64el", "mips64el"),
    ("abi64-gnu-linux-mips64", "mips64"),
    ("spe-gnu-linux-powerpc", "powerpcspe"),
    ("x32-gnu-linux-amd64", "x32"),
    ("base-gnu-linux-<cpu>", "<cpu>"),
    ("eabihf-gnu-kfreebsd-arm", "kfreebsd-armhf"),
    ("base-gnu-kfreebsd-<cpu>", "kfreebsd-<cpu>"),
    ("base-gnu-knetbsd-<cpu>", "knetbsd-<cpu>"),
    ("base-gnu-kopensolaris-<cpu>", "kopensolaris-<cpu>"),
    ("base-gnu-hurd-<cpu>", "hurd-<cpu>"),
    ("base-bsd-dragonflybsd-<cpu>", "dragonflybsd-<cpu>"),
    ("base-bsd-freebsd-<cpu>", "freebsd-<cpu>"),
    ("base-bsd-openbsd-<cpu>", "openbsd-<cpu>"),
    ("base-bsd-netbsd-<cpu>", "netbsd-<cpu>"),
    ("base-bsd-darwin-<cpu>", "darwin-<cpu>"),
    ("base-sysv-aix-<cpu>", "aix-<cpu>"),
    ("base-sysv-solaris-<cpu>", "solaris-<cpu>"),
    ("eabi-uclibc-uclinux-arm", "uclinux-armel"),
    ("base-uclibc-uclinux-<cpu>", "uclinux-<cpu>"),
    ("base-tos-mint-m68k", "mint-m68k"),
];

/// The CPU names of dpkg's `cputable`.
const CPUS: &[&str] = &[
    "alpha",
    "amd64",
    "arc",
    "armeb",
    "arm",
    "arm64",
    "avr32",
    "hppa",
    "loong64",
    "i386",
    "ia64",
    "m32r",
    "m68k",
    "mips",
    "mipsel",
    "mipsr6",
    "mipsr6el",
    "mips64",
    "mips64el",
    "mips64r6",
    "mips64r6el",
    "nios2",
    "or1k",
    "powerpc",
    "powerpcel",
    "ppc64",
    "ppc64el",
    "riscv64",
    "s390",
    "s390x",
    "sh3",
    "sh3eb",
    "sh4",
    "sh4eb",
    "sparc",
    "sparc64",
    "tilegx",
];

/// The ABI-LIBC-OS-CPU tuple of a Debian architecture name.
fn tuple(arch: &str) -> Option<[String; 4]> {
    TUPLES.iter().find_map(|(tuple, name)| {
        let tuple = match name.split_once("<cpu>") {
            None => (*name == arch).then(|| tuple.to_string())?,
            Some((prefix, _)) => {
                let cpu = arch.strip_prefix(prefix).filter(|c| CPUS.contains(c))?;
                tuple.replace("<cpu>", cpu)
            }
        };
        let parts: Vec<String> = tuple.splitn(4, '-').map(str::to_string).collect();
        parts.try_into().ok()
    })
}

/// The tuple a wildcard stands for (`any-arm` is `any-any-any-arm`), or
/// the architecture's own.
fn wildcard_tuple(wildcard: &str) -> Option<[String; 4]> {
    let parts: Vec<&str> = wildcard.splitn(4, '-').collect();
    if !parts.contains(&"any") {
        return tuple(wildcard);
    }
    let full: Vec<&str> = match parts.len() {
        1 => vec!["any"; 4],
        n => ["any"; 4][..4 - n].iter().copied().chain(parts).collect(),
    };
    let full: Vec<String> = full.into_iter().map(str::to_string).collect();
    full.try_into().ok()
}

/// dpkg's `debarch_is`: whether architecture `arch` is `wildcard` (an
/// architecture name, `any`, or a wildcard such as `linux-any`, `any-arm`).
pub fn is(arch: &str, wildcard: &str) -> bool {
    if arch == wildcard || wildcard == "any" {
        return true;
    }
    match (tuple(arch), wildcard_tuple(wildcard)) {
        (Some(real), Some(alias)) => real
            .iter()
            .zip(alias.iter())
            .all(|(r, a)| a == "any" || r == a),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::is;

    #[test]
    fn wildcards_as_dpkg_has_them() {
        // Checked against `dpkg-architecture -a ARCH -i WILDCARD`.
        for (arch, wildcard, want) in [
            ("armhf", "any-arm", true),
            ("armel", "any-arm", true),
            ("arm64", "any-arm", false),
            ("amd64", "linux-any", true),
            ("amd64", "any-amd64", true),
            ("x32", "any-amd64", true),
            ("amd64", "any-i386", false),
            ("hurd-i386", "any-i386", true),
            ("hurd-i386", "linux-any", false),
            ("hurd-i386", "hurd-any", true),
            ("kfreebsd-amd64", "kfreebsd-any", true),
            ("armhf", "gnueabihf-any-any-arm", false),
            ("armhf", "eabihf-any-any-any", true),
            ("musl-linux-arm64", "musl-any-any", true),
            ("arm64", "musl-any-any", false),
            ("amd64", "amd64", true),
            ("amd64", "i386", false),
            ("amd64", "any", true),
        ] {
            assert_eq!(is(arch, wildcard), want, "{arch} is {wildcard}");
        }
    }
}
