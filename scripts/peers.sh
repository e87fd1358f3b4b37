#!/usr/bin/env bash
# Install the real peers the tests run against, when missing: Orthanc (the PACS), DCMTK (foreign
# SCU/SCP), dicom3tools (dciodvfy), PixelMed (DicomSRValidator), PostgreSQL, openssl, systemd-analyze and
# Chromium. The tests start them on loopback themselves.
set -euo pipefail
missing=()
command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)  # DICOMweb archive tests
command -v storescu >/dev/null || missing+=(dcmtk)
command -v dciodvfy >/dev/null || missing+=(dicom3tools)
[ -f /usr/share/java/pixelmed.jar ] && command -v java >/dev/null || missing+=(pixelmed-apps)  # DicomSRValidator
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v openssl >/dev/null || missing+=(openssl)  # throwaway certificates for the TLS tests
command -v ss >/dev/null || missing+=(iproute2)  # listen backlogs (tests/support/net.py)
[ -x /usr/bin/chromium ] || missing+=(chromium)  # the web console's browser tests (driven by playwright)
command -v systemd-analyze >/dev/null || missing+=(systemd)  # verifies the units in systemd/
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The web viewer the display tests open results in (tests/e2e/test_viewer.py): OHIF Viewer, its built app
# (dist/) from the npm registry at a pinned version, unpacked once into a fixed folder.
OHIF_VERSION=3.13.2
OHIF_DIR=${DICOMNODE_OHIF_DIR:-/opt/dicomnode-peers/ohif}
if [ ! -f "$OHIF_DIR/$OHIF_VERSION/dist/index.html" ]; then
  command -v npm >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null; }
  echo "installing @ohif/app@$OHIF_VERSION into $OHIF_DIR"
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null)
  mkdir -p "$OHIF_DIR/$OHIF_VERSION.partial"
  tar -xzf "$work"/ohif-app-"$OHIF_VERSION".tgz -C "$OHIF_DIR/$OHIF_VERSION.partial" --strip-components=1 package/dist
  rm -rf "$work" "$OHIF_DIR/$OHIF_VERSION"
  mv "$OHIF_DIR/$OHIF_VERSION.partial" "$OHIF_DIR/$OHIF_VERSION"
fi
