# The controller image: the operator binary on distroless/cc (Debian 12's glibc, CA certificates,
# user 65532, no shell), which is what the chart's restricted security context expects.
#
#   docker build -t <registry>/multiarch-operator:<version> .
#
# Build it on each architecture (or let multiarch-operator build it:
# config/samples/multiarch-operator-image.yaml) for an image the chart runs on Graviton and x86.
# Both base images are arguments, for mirrors (GovCloud clusters often pull only from ECR).
#
# CARGO_FEATURES=fips (`make image FIPS=1`) builds every TLS connection on aws-lc-rs's FIPS 140-3
# module (README "FIPS (GovCloud)"); its build needs cmake, Go and Perl in the Rust stage, which
# come from Debian's packages (the Rust image is Debian 12), and a few minutes more. The runtime
# image is the same: the module is linked in statically.
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
# The image holding the binary at /multiarch-operator: the `build` stage below unless set.
# e2e/image_test.sh sets it to a binary built outside, as no base image can be pulled there.
ARG BINARY_FROM=build

FROM ${RUST_IMAGE} AS build
# Cargo features, comma-separated: `fips` or none.
ARG CARGO_FEATURES=
RUN case ",${CARGO_FEATURES}," in \
        *,fips,*) apt-get update \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake golang-go perl make \
            && rm -rf /var/lib/apt/lists/* ;; \
    esac
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin multiarch-operator --features "${CARGO_FEATURES}" \
    && cp target/release/multiarch-operator /multiarch-operator \
    && /multiarch-operator version

FROM ${BINARY_FROM} AS binary

FROM ${RUNTIME_IMAGE}
COPY --from=binary /multiarch-operator /usr/local/bin/multiarch-operator
# Numeric, so the kubelet can check runAsNonRoot without a passwd lookup.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/multiarch-operator"]
