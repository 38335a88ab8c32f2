# nginx from Debian's packages, as the load balancer of docker/compose.yaml.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update && apt-get install -y --no-install-recommends nginx-light && \
    rm -rf /var/lib/apt/lists/*
COPY nginx.conf /etc/nginx/lhama.conf
USER 65532:65532
ENTRYPOINT ["nginx", "-c", "/etc/nginx/lhama.conf", "-g", "daemon off;"]
