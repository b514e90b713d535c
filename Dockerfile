# The pipemon exporter image:
#   docker build --build-arg VERSION="$(cat VERSION)" -t ghcr.io/pipemon/pipemon:"$(cat VERSION)" .
# Runs as uid/gid 10001 (the Helm chart's runAsUser), on a read-only root filesystem if asked,
# and serves on :9864. Mount the config at /etc/pipemon/config/pipemon.yaml.

# Python 3.11 on Debian 12, pinned by version tag and by the digest of its multi-architecture
# index (update both together; docs/helm.md, "The image").
ARG BASE_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${BASE_IMAGE} AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
# Only what the package build needs (pyproject.toml reads README.md and VERSION).
COPY pyproject.toml README.md VERSION ./
COPY exporter/ exporter/
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="pipemon" \
      org.opencontainers.image.description="Prometheus exporter for media-processing pipelines" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/pipemon/pipemon" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
# The package and its runtime dependencies only (no test extras); pip compiles the bytecode at
# install, so nothing is written at run time.
COPY --from=build /wheels/ /tmp/wheels/
RUN pip install /tmp/wheels/pipemon-*.whl \
 && rm -rf /tmp/wheels \
 && groupadd --system --gid 10001 pipemon \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin pipemon
USER 10001:10001
EXPOSE 9864
ENTRYPOINT ["pipemon"]
CMD ["serve", "--config", "/etc/pipemon/config/pipemon.yaml", "--web.listen-address", ":9864"]
