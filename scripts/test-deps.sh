#!/usr/bin/env bash
# What the test suite uses beyond pyproject.toml's dev extra: two things from Debian's packages, offline-installable,
# in one apt step (about 30 s on the CI machine). `make test` runs this before pytest (and so does CI: .ci/run).
# - dataset-fashion-mnist (30 MB): the d2l experiment's data (tests/test_fashion_mnist.py, test_experiment.py, and
#   the Fashion-MNIST tests of test_train.py and test_device_data.py);
# - chromium + chromium-driver: the page's browser tests (tests/test_page.py).
# With everything installed it only looks (no apt call). Otherwise it installs what is missing with apt-get as root
# or through passwordless sudo; where it cannot (no root and no sudo, no apt-get, offline, TEST_DEPS=skip) it says
# which packages are missing and which tests will skip, and exits 0: the rest of the suite still runs.
set -uo pipefail

FASHION=/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

have_browser() {  # what tests/support/browser.py browser_binaries() looks for
  { command -v chromium || command -v chromium-browser; } >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1
}

missing() {
  packages=()
  [ -f "$FASHION" ] || packages+=(dataset-fashion-mnist)
  have_browser || packages+=(chromium chromium-driver)
}

what_skips() {
  local package
  for package in "${packages[@]}"; do
    case $package in
      dataset-fashion-mnist)
        echo "test-deps:   dataset-fashion-mnist: no $FASHION, so the Fashion-MNIST tests skip (tests/test_fashion_mnist.py," \
             "test_experiment.py, and those of test_train.py and test_device_data.py that read it)" >&2 ;;
      chromium)
        echo "test-deps:   chromium, chromium-driver: no headless chromium and chromedriver, so the browser tests of the" \
             "page skip (tests/test_page.py)" >&2 ;;
    esac
  done
}

missing
[ ${#packages[@]} -eq 0 ] && exit 0

reason=""
if [ "${TEST_DEPS:-}" = skip ]; then
  reason="TEST_DEPS=skip"
elif ! command -v apt-get >/dev/null 2>&1; then
  reason="no apt-get here"
elif [ "$(id -u)" = 0 ] || [ "$(whoami 2>/dev/null)" = root ] || [ -w /var/lib/dpkg ]; then
  sudo=()  # root (some sandboxes report another uid for root: whoami and dpkg's database are asked too)
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  reason="not root and no passwordless sudo"
fi

if [ -z "$reason" ]; then
  start=$(date +%s)
  install() {
    DEBIAN_FRONTEND=noninteractive timeout 600 "${sudo[@]}" apt-get install -y -qq \
      "${packages[@]}" >/dev/null 2>&1
  }
  # the package lists may already be there and current: only when the install fails are they updated
  if install || { timeout 300 "${sudo[@]}" apt-get update -qq >/dev/null 2>&1 && install; }; then
    echo "test-deps: installed ${packages[*]} with apt in $(( $(date +%s) - start )) s" >&2
    command -v chromium >/dev/null 2>&1 && echo "test-deps: $(chromium --version 2>/dev/null | head -1)" >&2
  else
    reason="apt-get could not install them: offline, or not in this system's package lists"
  fi
  missing
  [ -z "$reason" ] && reason="apt-get ran, yet they are still not found"
fi

if [ ${#packages[@]} -gt 0 ]; then
  echo "test-deps: missing ${packages[*]} (${reason:-not installed}); the tests that need them will skip:" >&2
  what_skips
  echo "test-deps: install them with: sudo apt-get install ${packages[*]}" >&2
fi
exit 0
