# Sourced by scripts/demo and scripts/test: installs what zkr needs on a fresh Debian machine.
# - Java and Apache ZooKeeper 3.8 (Debian's `zookeeper` package: jars in /usr/share/java)
# - Apache Curator 5.4 jars (libcurator-recipes-java) and kazoo 2.8 (python3-kazoo), for the
#   interoperability tests
# - Chromium and chromedriver, for the `zkr ui` browser test
# - a Rust toolchain (cargo) must already be there.

zkr_need_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "zkr: need root to run: $*" >&2; return 1; fi
}

zkr_setup() {
    local missing=()
    [ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
    [ -f /usr/share/java/curator-recipes.jar ] || missing+=(libcurator-recipes-java)
    [ -d /usr/lib/python3/dist-packages/kazoo ] || missing+=(python3-kazoo)
    command -v java >/dev/null || missing+=(default-jre-headless)
    command -v javac >/dev/null || missing+=(default-jdk-headless)
    # The `zkr ui` browser test (cli/tests/cli_ui.rs): headless Chromium through chromedriver.
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "zkr: installing ${missing[*]} (apt-get)" >&2
        zkr_need_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive zkr_need_root apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! command -v cargo >/dev/null; then
        [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    fi
    command -v cargo >/dev/null || { echo "zkr: cargo not found; install a Rust toolchain (rustup)" >&2; return 1; }
}
