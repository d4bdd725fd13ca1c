# The kata-operator OLM bundle image (registry+v1). Build from this directory:
#   podman build -f bundle.Dockerfile -t quay.io/kata-operator/bundle:v0.1.0 .
# The LABELs must equal metadata/annotations.yaml (tests/suite/olm_bundle.rs).
FROM scratch

# Core bundle labels.
LABEL operators.operatorframework.io.bundle.mediatype.v1=registry+v1
LABEL operators.operatorframework.io.bundle.manifests.v1=manifests/
LABEL operators.operatorframework.io.bundle.metadata.v1=metadata/
LABEL operators.operatorframework.io.bundle.package.v1=kata-operator
LABEL operators.operatorframework.io.bundle.channels.v1=alpha
LABEL operators.operatorframework.io.bundle.channel.default.v1=alpha

COPY manifests /manifests/
COPY metadata /metadata/
