# syntax=docker/dockerfile:1
# llmt-coordinator image. Build from the repository root:
#   docker build -f deploy/docker/coordinator.Dockerfile -t llmt-coordinator:0.1.0 .
# The build steps are deploy/docker/build.sh, tested outside Docker in CI.

FROM debian:12 AS build
ARG LLMT_CXX_ARCH=x86-64-v3
ARG JOBS=4
COPY deploy/docker/build-packages.txt /tmp/build-packages.txt
RUN apt-get update \
    && grep -v '^#' /tmp/build-packages.txt | xargs apt-get install -y --no-install-recommends \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY cmake/ cmake/
COPY proto/ proto/
COPY common/ common/
COPY kernels/ kernels/
COPY storage/ storage/
COPY worker/ worker/
COPY cli/ cli/
COPY coordinator/ coordinator/
COPY bench/ bench/
COPY deploy/docker/build.sh deploy/docker/build.sh
RUN LLMT_CXX_ARCH="${LLMT_CXX_ARCH}" deploy/docker/build.sh --component coordinator \
      --prefix /opt/llmt --build-dir /build --jobs "${JOBS}"

FROM debian:12-slim
LABEL org.opencontainers.image.title="llmt-coordinator" \
      org.opencontainers.image.description="llmt coordinator: job API, scheduler, state in RocksDB"
COPY --from=build /opt/llmt/share/llmt/runtime-packages.txt /opt/llmt/share/llmt/
RUN apt-get update \
    && xargs apt-get install -y --no-install-recommends < /opt/llmt/share/llmt/runtime-packages.txt \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 llmt \
    && useradd --system --uid 10001 --gid llmt --no-create-home --shell /usr/sbin/nologin llmt \
    && mkdir -p /var/lib/llmt /shared \
    && chown llmt:llmt /var/lib/llmt /shared
COPY --from=build /opt/llmt/ /opt/llmt/
COPY deploy/docker/healthcheck.sh /usr/local/bin/llmt-healthcheck
# gRPC (JobService, WorkerService) and HTTP (/metrics, /healthz, /readyz).
EXPOSE 7070 7071
USER 10001:10001
# The llmt user has no home directory and the root filesystem is read-only on
# Kubernetes: anything that writes under $HOME goes to /tmp (an emptyDir).
ENV LLMT_HTTP_PORT=7071 \
    HOME=/tmp
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/llmt-healthcheck"]
ENTRYPOINT ["/opt/llmt/bin/llmt-coordinator"]
CMD ["--data_dir=/var/lib/llmt/db", "--jobs_dir=/shared/jobs", \
     "--listen=0.0.0.0:7070", "--http_listen=0.0.0.0:7071"]
