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
[ -x /usr/bin/chromium ] || missing+=(chromium)  # the web console's browser tests (driven by playwright)
command -v systemd-analyze >/dev/null || missing+=(systemd)  # verifies the units in systemd/
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
