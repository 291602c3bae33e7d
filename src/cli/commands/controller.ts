import { UsageError } from '../../common/errors';
import { openAuditStore } from '../../audit';
import { startApiServer, type RunningApi } from '../../api/server';
import { API_TOKEN_REQUIRED, loadTokens } from '../../api/auth';
import { createControllerMetrics } from '../../metrics/controller';
import { serveMetrics, type MetricsServer } from '../../metrics/http';
import { startController } from '../../workers/controller';
import { apiTlsFiles } from '../../security/https';
import { onShutdownSignal } from '../../workers/runtime';
import { parse, str } from '../args';
import { commonOptions, configFrom, connectClient, say, temporalAddressOf } from '../context';

export const help =
  'ferry controller [--listen HOST:PORT [--tls-cert F --tls-key F [--tls-client-ca F]]] [--metrics HOST:PORT] [--tokens-file FILE] [--audit-db FILE | --audit-url postgres://…]   run the workflow worker on ferry-control (and the HTTP API)';

export async function run(argv: string[]): Promise<number> {
  const { values } = parse(
    argv,
    { ...commonOptions, listen: { type: 'string' }, 'tls-cert': { type: 'string' }, 'tls-key': { type: 'string' }, 'tls-client-ca': { type: 'string' }, metrics: { type: 'string' }, 'tokens-file': { type: 'string' }, 'audit-db': { type: 'string' }, 'audit-url': { type: 'string' } },
    false,
  );
  const cfg = configFrom(values);
  const auditDb = str(values['audit-db']) ?? cfg.auditDb;
  const auditUrl = str(values['audit-url']) ?? cfg.auditUrl;
  const listen = str(values.listen);
  const metricsAddr = str(values.metrics);
  const apiTls = apiTlsFiles(process.env, { cert: str(values['tls-cert']), key: str(values['tls-key']), clientCa: str(values['tls-client-ca']) });
  if (!listen && (str(values['tls-cert']) || str(values['tls-key']))) throw new UsageError('--tls-cert / --tls-key serve the HTTP API: give --listen HOST:PORT too');
  // Check the API's tokens before anything starts.
  const tokens = listen ? loadTokens({ token: cfg.apiToken, tokensFile: str(values['tokens-file']) ?? cfg.apiTokensFile }) : [];
  if (listen && tokens.length === 0) {
    throw new UsageError(API_TOKEN_REQUIRED);
  }
  const store = await openAuditStore({ url: auditUrl, file: auditDb });
  const address = temporalAddressOf(cfg);
  let api: RunningApi | null = null;
  let metricsServer: MetricsServer | null = null;
  let closeClient: (() => Promise<void>) | null = null;
  const cleanup = async (): Promise<void> => {
    await api?.close();
    await metricsServer?.close();
    await closeClient?.();
    await store.close();
  };
  // The API and metrics come up first: the controller's ready line ("polling …") is last.
  try {
    if (listen || metricsAddr) {
      const c = await connectClient(cfg);
      closeClient = c.close;
      const client = c.client;
      const metrics = createControllerMetrics({ store, client });
      if (listen) {
        api = await startApiServer({ client, store, tokens, listen, metrics: metricsAddr ? null : metrics.registry, metricsToken: cfg.metricsToken, tls: apiTls });
        say(`ferry controller: API on ${api.url} (OpenAPI ${api.url}/v1/openapi.json${metricsAddr ? '' : `, metrics ${api.url}/metrics`}, dashboard ${api.url}/ui/); audit trail in ${store.kind === 'sqlite' ? auditDb : 'PostgreSQL'}`);
      }
      if (metricsAddr) {
        metricsServer = await serveMetrics(metricsAddr, metrics.registry, { token: cfg.metricsToken });
        say(`ferry controller: metrics on ${metricsServer.url}`);
      }
    }
  } catch (e) {
    await cleanup();
    throw e;
  }
  const controller = await startController({ temporalAddress: address, temporalTls: cfg.temporalTls ?? null, namespace: cfg.namespace, audit: store }).catch(async (e: unknown) => {
    await cleanup();
    throw e;
  });
  onShutdownSignal((sig) => {
    say(`ferry controller: ${sig}, shutting down`);
    void controller.shutdown();
  });
  await controller.done;
  await cleanup();
  say('ferry controller: stopped');
  return 0;
}
