#!/bin/sh
# Trust an optional extra CA bundle (for networks with a TLS-intercepting proxy) in the system
# store that apt, pip, requests and curl read. Used by every image; a no-op without a bundle.
set -eu
extra=/tmp/lab-build/ca/extra-ca.crt
if [ -s "$extra" ]; then
  mkdir -p /usr/local/share/ca-certificates
  cp "$extra" /usr/local/share/ca-certificates/lab-extra-ca.crt
  update-ca-certificates >/dev/null 2>&1
  echo "trusting the extra CA bundle ($(grep -c 'BEGIN CERTIFICATE' "$extra") certificates)"
fi
