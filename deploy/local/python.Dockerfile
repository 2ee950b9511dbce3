# Local stand-in for python:3.11-slim, for hosts that reach no image registry
# (`make test-deploy`): Debian bookworm's python3 (3.11) over a debootstrap image.
# The host's CA bundle comes along so that pip trusts the same TLS as the host.
FROM kbatch-local/debian:bookworm
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /usr/local/share/kbatch/host-ca.crt
ENV PIP_CERT=/usr/local/share/kbatch/host-ca.crt \
    REQUESTS_CA_BUNDLE=/usr/local/share/kbatch/host-ca.crt
