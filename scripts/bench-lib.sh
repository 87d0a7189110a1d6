# Shell functions shared by the benchmark scripts (sourced, not run).
# The caller sets $work (a scratch dir) and $runs.

make_suite() { # DIR COUNT
    mkdir -p "$1/debian/tests" "$1/debian/source"
    echo "3.0 (native)" > "$1/debian/source/format"
    printf 'dep8-bench (1.0) unstable; urgency=medium\n\n  * Benchmark.\n\n -- dep8 <dep8@example.org>  Wed, 25 Nov 2026 12:00:00 +0000\n' > "$1/debian/changelog"
    printf 'Source: dep8-bench\nMaintainer: dep8 <dep8@example.org>\n\nPackage: dep8-bench\nArchitecture: all\nDescription: benchmark\n x\n' > "$1/debian/control"
    printf '#!/usr/bin/make -f\n%%:\n\tdh $@\n' > "$1/debian/rules"
    : > "$1/debian/tests/control"
    for i in $(seq "$2"); do
        printf 'Test-Command: true\nDepends:\nFeatures: test-name=t%s\n\n' "$i" >> "$1/debian/tests/control"
    done
}

# best of RUNS wall-clock seconds for a command; the word OUT in it is
# replaced by a fresh output directory
best() {
    local best=""
    for _ in $(seq "$runs"); do
        local out; out=$(mktemp -u "$work/out.XXXX")
        local t0; t0=$(date +%s.%N)
        "${@/#OUT/$out}" >/dev/null 2>&1 || true
        local t; t=$(echo "$(date +%s.%N) - $t0" | bc -l)
        if [ -z "$best" ] || [ "$(echo "$t < $best" | bc -l)" = 1 ]; then best=$t; fi
    done
    printf '%.3f' "$best"
}
