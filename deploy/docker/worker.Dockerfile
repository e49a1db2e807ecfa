# syntax=docker/dockerfile:1
# llmt-worker image: the worker daemon plus `llmt` (the trainer it runs for
# each rank). Build from the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t llmt-worker:0.1.0-cuda .
# CPU-only variant (no CUDA, Debian 12 like the coordinator):
#   docker build -f deploy/docker/worker.Dockerfile --build-arg LLMT_CUDA=OFF \
#     --build-arg BUILD_IMAGE=debian:12 --build-arg RUNTIME_IMAGE=debian:12-slim \
#     -t llmt-worker:0.1.0-cpu .
# The CUDA images are NVIDIA's Ubuntu 24.04 ones with cuDNN: the runtime image
# carries cudart, cuBLAS/cuBLASLt, NCCL and libcudnn.so.9 (loaded at run time
# for the default attention; without it the own kernels run, slower), the
# devel image cuDNN's headers, without which the build leaves cuDNN out;
# Ubuntu 24.04 has the same gRPC, Protobuf and Abseil versions as Debian 12.
# The GPU driver comes from the node (NVIDIA container toolkit). The build
# steps are deploy/docker/build.sh.
ARG BUILD_IMAGE=nvidia/cuda:12.6.3-cudnn-devel-ubuntu24.04
ARG RUNTIME_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

FROM ${BUILD_IMAGE} AS build
ARG LLMT_CUDA=ON
ARG LLMT_CXX_ARCH=x86-64-v3
ARG JOBS=4
ENV DEBIAN_FRONTEND=noninteractive
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
RUN LLMT_CXX_ARCH="${LLMT_CXX_ARCH}" deploy/docker/build.sh --component worker \
      --prefix /opt/llmt --build-dir /build --cuda "${LLMT_CUDA}" --jobs "${JOBS}"

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="llmt-worker" \
      org.opencontainers.image.description="llmt worker daemon and trainer"
ENV DEBIAN_FRONTEND=noninteractive
COPY --from=build /opt/llmt/share/llmt/runtime-packages.txt /opt/llmt/share/llmt/
# Packages already in the runtime image (CUDA libraries) are left as they are.
RUN apt-get update \
    && xargs apt-get install -y --no-install-recommends < /opt/llmt/share/llmt/runtime-packages.txt \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 llmt \
    && useradd --system --uid 10001 --gid llmt --no-create-home --shell /usr/sbin/nologin llmt \
    && mkdir -p /var/lib/llmt-worker /shared /data \
    && chown llmt:llmt /var/lib/llmt-worker /shared
COPY --from=build /opt/llmt/ /opt/llmt/
COPY deploy/docker/healthcheck.sh /usr/local/bin/llmt-healthcheck
# HOME: the llmt user has no home directory and the root filesystem is
# read-only on Kubernetes; /tmp is an emptyDir there.
ENV PATH=/opt/llmt/bin:$PATH \
    HOME=/tmp \
    LLMT_HTTP_PORT=7072 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# HTTP: /metrics, /healthz, /readyz. Ranks pick their own ports for Gloo/NCCL.
EXPOSE 7072
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/llmt-healthcheck"]
ENTRYPOINT ["/opt/llmt/bin/llmt-worker"]
CMD ["--state_dir=/var/lib/llmt-worker", "--http_listen=0.0.0.0:7072"]
