# The controller image: the operator binary on distroless/cc (Debian 12's glibc, CA certificates,
# user 65532, no shell), which is what the chart's restricted security context expects.
#
#   docker build -t <registry>/multiarch-operator:<version> .
#
# Build it on each architecture (or let multiarch-operator build it:
# config/samples/multiarch-operator-image.yaml) for an image the chart runs on Graviton and x86.
# Both base images are arguments, for mirrors (GovCloud clusters often pull only from ECR).
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
# The image holding the binary at /multiarch-operator: the `build` stage below unless set.
# e2e/image_test.sh sets it to a binary built outside, as no base image can be pulled there.
ARG BINARY_FROM=build

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin multiarch-operator \
    && cp target/release/multiarch-operator /multiarch-operator

FROM ${BINARY_FROM} AS binary

FROM ${RUNTIME_IMAGE}
COPY --from=binary /multiarch-operator /usr/local/bin/multiarch-operator
# Numeric, so the kubelet can check runAsNonRoot without a passwd lookup.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/multiarch-operator"]
