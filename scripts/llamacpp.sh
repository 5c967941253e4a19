# scripts/llamacpp.sh: builds llama.cpp from the pinned llama-cpp-python source release (docs/ARCHITECTURE.md §6),
# for the scripts that hold the engine to llama.cpp (bench-vs-llamacpp.sh, differential.sh). Sourced, not run.
#
# Callers set: cache (the cache directory), jobs (parallel build jobs), llama_cpp_python_version, and define
# progress and fail (one-line messages to stderr; fail exits). build_llama_cpp [TARGET...] builds the given cmake
# targets (default: llama-bench, which bench-vs-llamacpp.sh runs; the probe and the other C programs need only the
# `llama` library target and the ggml libraries it pulls in, 44% of the compile) and sets LLAMA_CPP_ROOT
# (unpacked sources in src/vendor/llama.cpp), LLAMA_CPP_BUILD (the build directory, with its static libraries) and
# LLAMA_BENCH (the llama-bench binary, when built). It reuses an earlier build with the same version and cmake flags, building only targets that build
# has not built yet. build_llama_cpp_libraries builds what a program linking the llama library needs for the flavor
# (below) and sets the same variables. build_probe (after either) compiles scripts/differential/probe.c against
# those static libraries and sets PROBE.
#
# llama_cpp_flavor (default native) picks the build: `native` (build/, GGML_NATIVE: what llama.cpp does on this
# CPU) or `avx2` (build-avx2/, the AVX2 code paths only, AVX-512 off: what llama.cpp does on an AVX2 CPU, the
# reference for the engine's AVX2 kernel set on any CPU that has AVX2) or `sse42` (build-sse42/, SSE4.2 without AVX:
# what llama.cpp does on the appliance's vCPU under TCG, the reference for the engine's portable kernels) or
# `native-noamx` (build-native-noamx/, GGML_NATIVE with Intel AMX compiled out: on a CPU with AMX, what llama.cpp does
# without its AMX kernels, which the engine does not mirror; see differential.sh). All share one download of the
# sources.

# The llama-cpp-python source release whose vendored llama.cpp we build. Pinned so that numbers from different days
# compare; the sha256 is the one of the sdist we measured with (checked when the default version is used).
LLAMA_CPP_PYTHON_VERSION_DEFAULT="0.3.36"
LLAMA_CPP_PYTHON_SHA256_DEFAULT="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

# The cmake configuration we build with; part of the stamp, so a change rebuilds. llama_cpp_select_flavor adds the
# flavor's instruction-set flags.
cmake_common_flags=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DLLAMA_CURL=OFF
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=OFF
    -DLLAMA_BUILD_SERVER=OFF
    -DLLAMA_BUILD_TOOLS=ON
)

# Sets cmake_flags and LLAMA_CPP_BUILD_DIR (relative to the version's root) for llama_cpp_flavor.
llama_cpp_select_flavor() {
    case "${llama_cpp_flavor:-native}" in
    native)
        cmake_flags=("${cmake_common_flags[@]}" -DGGML_NATIVE=ON)
        LLAMA_CPP_BUILD_DIR=build
        ;;
    native-noamx)
        # As native, without AMX: GCC's explicit -mno-* options win over -march=native whatever their order, so
        # ggml-cpu is built without __AMX_INT8__ and registers no AMX buffer type (ggml-cpu/amx/amx.cpp).
        local no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        cmake_flags=("${cmake_common_flags[@]}" -DGGML_NATIVE=ON "-DCMAKE_C_FLAGS=$no_amx" "-DCMAKE_CXX_FLAGS=$no_amx")
        LLAMA_CPP_BUILD_DIR=build-native-noamx
        ;;
    avx2)
        # ggml's x86 options as an AVX2 machine without AVX-512 would pick them (GGML_NATIVE off, so nothing is
        # probed from this CPU).
        cmake_flags=("${cmake_common_flags[@]}" -DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON
            -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF
            -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF
            -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
        LLAMA_CPP_BUILD_DIR=build-avx2
        ;;
    sse42)
        # What llama.cpp does on a CPU with SSE4.2 and no AVX, as the appliance's vCPU under QEMU's TCG is
        # (runner/src/qemu.rs TCG_CPU): ggml's SSE paths (4 lanes, no FMA) and its generic quantized products.
        cmake_flags=("${cmake_common_flags[@]}" -DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=OFF -DGGML_AVX2=OFF
            -DGGML_BMI2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF
            -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF
            -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
        LLAMA_CPP_BUILD_DIR=build-sse42
        ;;
    *) fail "unknown llama.cpp flavor '${llama_cpp_flavor}' (native, native-noamx, avx2 or sse42)" ;;
    esac
}

build_llama_cpp() {
    local -a targets=("$@")
    [ ${#targets[@]} -gt 0 ] || targets=(llama-bench)
    llama_cpp_select_flavor
    local root="$cache/llama.cpp/$llama_cpp_python_version"
    local build="$root/$LLAMA_CPP_BUILD_DIR"
    local stamp="$build.stamp"
    # The stamp's first line: the configuration, then "; target NAME" for each target built so far (an earlier
    # version of this script wrote the same line with llama-bench as its one target); its second, the sdist.
    local configuration
    configuration="llama-cpp-python $llama_cpp_python_version; cmake ${cmake_flags[*]}"

    local -a missing=()
    local target first_line=""
    [ -f "$stamp" ] && first_line="$(head -n 1 "$stamp")"
    if [ -d "$build" ] && [[ "$first_line" == "$configuration" || "$first_line" == "$configuration; target "* ]]; then
        for target in "${targets[@]}"; do
            # llama-bench links the llama library, so a build with llama-bench has it (and its stamp stays as it is,
            # readable by the earlier version of this script).
            [[ "$first_line; " == *"; target $target; "* ]] ||
                [[ "$target" == llama && "$first_line; " == *"; target llama-bench; "* ]] ||
                missing+=("$target")
        done
        if [ ${#missing[@]} -eq 0 ]; then
            progress "llama.cpp: reusing the build in $build ($(sed -n 2p "$stamp"))"
        else
            progress "llama.cpp: reusing the build in $build, adding ${missing[*]}"
            build_llama_cpp_targets "$build" "${missing[@]}"
            sed -i "1s/\$/$(printf '; target %s' "${missing[@]}")/" "$stamp"
        fi
    else
        fetch_llama_cpp "$root"
        configure_llama_cpp "$root" "$build"
        build_llama_cpp_targets "$build" "${targets[@]}"
        {
            printf '%s%s\n' "$configuration" "$(printf '; target %s' "${targets[@]}")"
            printf '%s, built %s\n' "$(cat "$root/source.stamp")" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        } >"$stamp"
    fi
    LLAMA_CPP_ROOT="$root"
    LLAMA_CPP_BUILD="$build"
    if [ -x "$build/bin/llama-bench" ]; then
        LLAMA_BENCH="$build/bin/llama-bench"
    fi
}

# fetch_llama_cpp ROOT: unless ROOT holds an unpacked download already (ROOT/source.stamp names it), downloads the
# pinned sdist into ROOT (emptied first), checks its sha256 and unpacks it; writes ROOT/source.stamp.
fetch_llama_cpp() {
    local root="$1"
    if [ -f "$root/source.stamp" ] && [ -f "$root/src/vendor/llama.cpp/CMakeLists.txt" ]; then
        return
    fi
    # A download from before source.stamp existed: its native build's stamp names the sdist on its second line.
    if [ -f "$root/build.stamp" ] && [ -f "$root/src/vendor/llama.cpp/CMakeLists.txt" ]; then
        sed -n 2p "$root/build.stamp" | sed 's/, built .*//' >"$root/source.stamp"
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
    # --no-binary names only llama-cpp-python: pip prepares the sdist's metadata, and with `:all:` it would also build
    # the build backend's own dependencies from source (on a Debian 12 without scikit-build-core that ran for ten
    # minutes without finishing; with wheels for them it takes seconds). If that fails, a build backend that is
    # already installed is used instead.
    "$pip_command" download --no-binary llama-cpp-python --no-deps --disable-pip-version-check \
        --dest "$root/download" "llama-cpp-python==$llama_cpp_python_version" >"$root/download.log" 2>&1 ||
        "$pip_command" download --no-binary llama-cpp-python --no-deps --no-build-isolation \
            --disable-pip-version-check --dest "$root/download" "llama-cpp-python==$llama_cpp_python_version" \
            >>"$root/download.log" 2>&1 ||
        fail "pip download of llama-cpp-python==$llama_cpp_python_version failed; see $root/download.log"
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
    printf 'sdist %s sha256 %s\n' "$(basename "$sdist")" "$digest" >"$root/source.stamp"
}

# configure_llama_cpp ROOT BUILD: cmake's configure step for the unpacked sources into BUILD (emptied first).
configure_llama_cpp() {
    local root="$1" build="$2"
    rm -rf "$build"

    progress "llama.cpp: configuring (cmake ${cmake_flags[*]})"
    cmake -S "$root/src/vendor/llama.cpp" -B "$build" "${cmake_flags[@]}" >"$build.configure.log" 2>&1 ||
        fail "cmake configure failed; see $build.configure.log"
}

# build_llama_cpp_libraries: the static libraries a program that links the llama library needs (the probe and the
# other C programs of scripts/differential/), for llama_cpp_flavor. Only ggml-cpu is compiled with the flavor's
# instruction-set flags: the llama library and ggml-base get the same flags in every flavor (cmake's flags.make for
# them differ only in the build directory's include path). So a flavor other than native builds only the ggml
# target (ggml, ggml-base, ggml-cpu: about 30 s on 2 cores) and links the llama library of the native build (built
# first if missing; LLAMA_LIBRARY names it), instead of compiling the llama library again (about 90 s).
build_llama_cpp_libraries() {
    local flavor="${llama_cpp_flavor:-native}"
    llama_cpp_flavor=native
    build_llama_cpp llama
    LLAMA_LIBRARY="$LLAMA_CPP_BUILD/src/libllama.a"
    llama_cpp_flavor="$flavor"
    [ "$flavor" = native ] || build_llama_cpp ggml
}

# build_llama_cpp_targets BUILD TARGET...: builds the targets in BUILD (configured), keeping the log in BUILD.log.
build_llama_cpp_targets() {
    local build="$1"
    shift
    # On 2 cores with other builds running, the llama library took 3 minutes from scratch; llama-bench then took 4 more.
    progress "llama.cpp: building $* with $jobs jobs (minutes; log: $build.log)"
    # Progress: one line each time cmake's percentage moves by 10 or more, plus each finished target; the full log
    # is kept. A shell loop, not awk: Debian's mawk reads its input in blocks, which held the lines back for minutes.
    if ! cmake --build "$build" --parallel "$jobs" --target "$@" 2>&1 |
        tee -a "$build.log" |
        {
            local line last=-10
            while IFS= read -r line; do
                [[ "$line" =~ ^\[\ *([0-9]+)%\] ]] || continue
                if ((BASH_REMATCH[1] >= last + 10)) || [[ "$line" == *"Built target"* ]]; then
                    printf '    %s\n' "$line" >&2
                    last=${BASH_REMATCH[1]}
                fi
            done
        }; then
        fail "llama.cpp build failed; see $build.log"
    fi
    if [[ " $* " == *" llama-bench "* ]] && [ ! -x "$build/bin/llama-bench" ]; then
        fail "the build finished but $build/bin/llama-bench is missing; see $build.log"
    fi
    progress "llama.cpp: built $*"
}


# The differential harness's llama.cpp side (scripts/differential/probe.c), linked against the static libraries of
# the build above; rebuilt when probe.c is newer than the binary.
build_probe() {
    local probe_source
    probe_source="$(dirname "${BASH_SOURCE[0]}")/differential/probe.c"
    PROBE="$LLAMA_CPP_BUILD/differential-probe"
    if [ -x "$PROBE" ] && [ ! "$probe_source" -nt "$PROBE" ]; then
        return
    fi
    progress "llama.cpp: building the differential probe"
    link_against_llama_cpp "$probe_source" "$PROBE"
}

# link_against_llama_cpp SOURCE.c OUTPUT: compiles a C program with llama.cpp's and ggml's headers and links it
# against the static libraries of the build above (after build_llama_cpp or build_llama_cpp_libraries), with
# LLAMA_LIBRARY where that build has no llama library of its own.
link_against_llama_cpp() {
    local source_file="$1" output="$2"
    local source_dir="$LLAMA_CPP_ROOT/src/vendor/llama.cpp"
    local -a libraries
    mapfile -t libraries < <(find "$LLAMA_CPP_BUILD" -name 'lib*.a' | sort)
    [ ${#libraries[@]} -gt 0 ] || fail "no static libraries under $LLAMA_CPP_BUILD"
    if [[ " ${libraries[*]} " != *"/libllama.a "* ]]; then
        [ -f "${LLAMA_LIBRARY:-}" ] || fail "$LLAMA_CPP_BUILD has no llama library and LLAMA_LIBRARY names none"
        libraries+=("$LLAMA_LIBRARY")
    fi
    cc -O2 -c "$source_file" -I "$source_dir/include" -I "$source_dir/ggml/include" -o "$output.o" ||
        fail "$(basename "$source_file") does not compile"
    c++ -o "$output" "$output.o" -Wl,--start-group "${libraries[@]}" -Wl,--end-group -fopenmp -lpthread -ldl -lm ||
        fail "$(basename "$output") does not link"
}
