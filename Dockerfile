# Playline: Twilio Media Streams <-> PlayAI-protocol voice agents.
# Multi-stage: build with dev dependencies, run with production ones only.

# Base image pinned to an exact Node release (24, an LTS line), so the same Dockerfile builds the
# same runtime next month. Both FROM lines name the same tag (test/deploy.test.ts checks); to
# update, change both (deploy/README.md, "Pinned base images").
#
# Native modules (better-sqlite3, bufferutil) install prebuilt binaries when there is one for
# this Node and platform, and compile otherwise: the install stages carry a compiler.
FROM node:24.21.0-bookworm-slim AS toolchain
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*

FROM toolchain AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
# The web console (web/, built by scripts/build-console.mjs into dist/console, served at /).
COPY scripts ./scripts
COPY web ./web
RUN npm run build

FROM toolchain AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

FROM node:24.21.0-bookworm-slim
ENV NODE_ENV=production \
    PORT=8080 \
    HOST=0.0.0.0 \
    DATA_DIR=/data
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY assets ./assets
RUN mkdir -p /data && chown node:node /data
USER node
EXPOSE 8080
VOLUME ["/data"]
# Twilio gives media streams no second chance: drain first, then stop.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||8080)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# Exec form, no shell: the node image's entrypoint execs this, so node is PID 1 and receives
# SIGTERM itself (src/main.ts handles it; PID 1 gets no default signal action). Same as `npm start`.
# --max-semi-space-size=8 keeps V8's young generation at 16 MB instead of letting it grow to 32 MB
# under load: about 15 MB less RSS at 300 calls for no measurable CPU (BENCHMARKS.md, Memory).
CMD ["node", "--max-semi-space-size=8", "dist/main.js"]
