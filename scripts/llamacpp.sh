# scripts/llamacpp.sh: builds llama.cpp from the pinned llama-cpp-python source release (docs/ARCHITECTURE.md §6),
# for the scripts that hold the engine to llama.cpp (bench-vs-llamacpp.sh, differential.sh). Sourced, not run.
#
# Callers set: cache (the cache directory), jobs (parallel build jobs), llama_cpp_python_version, and define
# progress and fail (one-line messages to stderr; fail exits). build_llama_cpp sets LLAMA_BENCH (the llama-bench
# binary) and LLAMA_CPP_ROOT (unpacked sources in src/vendor/llama.cpp, static libraries under build/), reusing
# an earlier build with the same version and cmake flags. build_probe (after build_llama_cpp) compiles
# scripts/differential/probe.c against that build's static libraries and sets PROBE.

# The llama-cpp-python source release whose vendored llama.cpp we build. Pinned so that numbers from different days
# compare; the sha256 is the one of the sdist we measured with (checked when the default version is used).
LLAMA_CPP_PYTHON_VERSION_DEFAULT="0.3.36"
LLAMA_CPP_PYTHON_SHA256_DEFAULT="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

# The cmake configuration we build with; part of the stamp, so a change rebuilds.
cmake_flags=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DLLAMA_CURL=OFF
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=OFF
    -DLLAMA_BUILD_SERVER=OFF
    -DLLAMA_BUILD_TOOLS=ON
    -DGGML_NATIVE=ON
)

build_llama_cpp() {
    local root="$cache/llama.cpp/$llama_cpp_python_version"
    local stamp="$root/build.stamp"
    local bench_binary="$root/build/bin/llama-bench"
    local expected_stamp
    expected_stamp="llama-cpp-python $llama_cpp_python_version; cmake ${cmake_flags[*]}; target llama-bench"

    if [ -f "$stamp" ] && [ -x "$bench_binary" ] && [ "$(head -n 1 "$stamp")" = "$expected_stamp" ]; then
        progress "llama.cpp: reusing the build in $root ($(sed -n 2p "$stamp"))"
        LLAMA_BENCH="$bench_binary"
        LLAMA_CPP_ROOT="$root"
        return
    fi

    command -v pip >/dev/null 2>&1 || command -v pip3 >/dev/null 2>&1 ||
        fail "pip is not installed; it is needed to download the llama-cpp-python source release"
    local pip_command
    pip_command="$(command -v pip || command -v pip3)"
    if ! command -v cmake >/dev/null 2>&1; then
        fail "cmake is not installed; install it (on Debian: apt-get install cmake) and run again"
    fi
    command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 ||
        fail "no C++ compiler found; install one (on Debian: apt-get install g++) and run again"

    rm -rf "$root"
    mkdir -p "$root/download"
    progress "llama.cpp: downloading the llama-cpp-python $llama_cpp_python_version source release with pip"
    "$pip_command" download --no-binary :all: --no-deps --no-build-isolation --disable-pip-version-check \
        --dest "$root/download" "llama-cpp-python==$llama_cpp_python_version" >"$root/download.log" 2>&1 ||
        {
            # --no-build-isolation needs nothing here (pip only fetches), but older pips may refuse it; retry plain.
            "$pip_command" download --no-binary :all: --no-deps --disable-pip-version-check \
                --dest "$root/download" "llama-cpp-python==$llama_cpp_python_version" >"$root/download.log" 2>&1 ||
                fail "pip download of llama-cpp-python==$llama_cpp_python_version failed; see $root/download.log"
        }
    local sdist
    sdist="$(find "$root/download" -maxdepth 1 -name 'llama_cpp_python-*.tar.gz' | head -n 1)"
    [ -n "$sdist" ] || fail "pip downloaded no llama_cpp_python-*.tar.gz into $root/download (see $root/download.log)"
    local digest
    digest="$(sha256sum "$sdist" | cut -d ' ' -f 1)"
    if [ "$llama_cpp_python_version" = "$LLAMA_CPP_PYTHON_VERSION_DEFAULT" ] &&
        [ "$digest" != "$LLAMA_CPP_PYTHON_SHA256_DEFAULT" ]; then
        fail "$(basename "$sdist") has sha256 $digest, expected $LLAMA_CPP_PYTHON_SHA256_DEFAULT"
    fi
    progress "llama.cpp: $(basename "$sdist"), sha256 $digest"

    progress "llama.cpp: unpacking"
    mkdir -p "$root/src"
    tar -xzf "$sdist" -C "$root/src" --strip-components=1 || fail "cannot unpack $sdist"
    local source="$root/src/vendor/llama.cpp"
    [ -f "$source/CMakeLists.txt" ] || fail "$sdist has no vendor/llama.cpp/CMakeLists.txt"

    progress "llama.cpp: configuring (cmake ${cmake_flags[*]})"
    cmake -S "$source" -B "$root/build" "${cmake_flags[@]}" >"$root/configure.log" 2>&1 ||
        fail "cmake configure failed; see $root/configure.log"
    progress "llama.cpp: building llama-bench with $jobs jobs (about 6 minutes on 2 idle cores; log: $root/build.log)"
    # Progress: one line each time cmake's percentage moves, plus each finished target; the full log is kept.
    if ! cmake --build "$root/build" --target llama-bench --parallel "$jobs" 2>&1 |
        tee "$root/build.log" |
        awk 'match($0, /^\[ *[0-9]+%\]/) {
                 percent = substr($0, RSTART + 1, RLENGTH - 3) + 0
                 if (percent != last || $0 ~ /Built target/) { print "    " $0; fflush(); last = percent }
             }' >&2; then
        fail "llama.cpp build failed; see $root/build.log"
    fi
    [ -x "$bench_binary" ] || fail "the build finished but $bench_binary is missing; see $root/build.log"
    {
        printf '%s\n' "$expected_stamp"
        printf 'sdist %s sha256 %s, built %s\n' "$(basename "$sdist")" "$digest" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } >"$stamp"
    progress "llama.cpp: built $bench_binary"
    LLAMA_BENCH="$bench_binary"
    LLAMA_CPP_ROOT="$root"
}


# The differential harness's llama.cpp side (scripts/differential/probe.c), linked against the static libraries of
# the build above; rebuilt when probe.c is newer than the binary.
build_probe() {
    local probe_source
    probe_source="$(dirname "${BASH_SOURCE[0]}")/differential/probe.c"
    PROBE="$LLAMA_CPP_ROOT/build/differential-probe"
    if [ -x "$PROBE" ] && [ ! "$probe_source" -nt "$PROBE" ]; then
        return
    fi
    progress "llama.cpp: building the differential probe"
    link_against_llama_cpp "$probe_source" "$PROBE"
}

# link_against_llama_cpp SOURCE.c OUTPUT: compiles a C program with llama.cpp's and ggml's headers and links it
# against the static libraries of the build above (after build_llama_cpp).
link_against_llama_cpp() {
    local source_file="$1" output="$2"
    local source_dir="$LLAMA_CPP_ROOT/src/vendor/llama.cpp"
    local -a libraries
    mapfile -t libraries < <(find "$LLAMA_CPP_ROOT/build" -name 'lib*.a' | sort)
    [ ${#libraries[@]} -gt 0 ] || fail "no static libraries under $LLAMA_CPP_ROOT/build"
    cc -O2 -c "$source_file" -I "$source_dir/include" -I "$source_dir/ggml/include" -o "$output.o" ||
        fail "$(basename "$source_file") does not compile"
    c++ -o "$output" "$output.o" -Wl,--start-group "${libraries[@]}" -Wl,--end-group -fopenmp -lpthread -ldl -lm ||
        fail "$(basename "$output") does not link"
}
