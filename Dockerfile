# pando on an empty base image: nothing but the statically linked binary.
#
# The binary is built on the host (no base image is pulled, so the build
# works without a registry):
#
#   make docker-image        # CGO_ENABLED=0 go build, then docker build
#
# which runs, in a context holding only the binary and an empty data/:
#
#   docker build -t pando:dev .docker-ctx
FROM scratch
COPY --chown=65534:65534 data /data
COPY pando /pando
USER 65534:65534
VOLUME /data
EXPOSE 7001
ENTRYPOINT ["/pando"]
CMD ["server", "--data-dir", "/data", "--listen-addr", "0.0.0.0:7001"]
