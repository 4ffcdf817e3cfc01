# syntax=docker/dockerfile:1
# llm-edge-router: build with the dev toolchain, run on a slim image with production dependencies only.

FROM node:22-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

FROM node:22-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY config ./config
# The default config; mount your own over it (docker-compose.yml does).
COPY config/gateway.yaml /etc/llm-edge-router/gateway.yaml
ENV LLM_ROUTER_CONFIG=/etc/llm-edge-router/gateway.yaml
# The image's unprivileged user (uid 1000): nothing here needs root.
USER node
EXPOSE 8080
# node:22-slim has no curl: node's own fetch checks liveness (PORT is what config/gateway.yaml listens on).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||8080)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["node", "dist/main.js"]
