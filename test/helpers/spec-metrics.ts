/** SPEC §5's metrics table, as written: each metric's type and its exact label names. */
export const SPEC_METRICS: Readonly<Record<string, { type: string; labels: string[] }>> = {
  llm_router_requests_total: { type: 'counter', labels: ['route', 'provider', 'model', 'status'] },
  llm_router_request_duration_seconds: {
    type: 'histogram',
    labels: ['route', 'provider', 'model', 'stream'],
  },
  llm_router_time_to_first_token_seconds: { type: 'histogram', labels: ['provider', 'model'] },
  llm_router_time_per_output_token_seconds: { type: 'histogram', labels: ['provider', 'model'] },
  llm_router_overhead_seconds: { type: 'histogram', labels: ['route'] },
  llm_router_upstream_attempts_total: { type: 'counter', labels: ['provider', 'model', 'outcome'] },
  llm_router_failovers_total: { type: 'counter', labels: ['route', 'from_provider', 'reason'] },
  llm_router_circuit_state: { type: 'gauge', labels: ['provider', 'model'] },
  llm_router_circuit_transitions_total: { type: 'counter', labels: ['provider', 'model', 'to'] },
  llm_router_tokens_total: { type: 'counter', labels: ['provider', 'model', 'kind'] },
  llm_router_cost_usd_total: { type: 'counter', labels: ['provider', 'model'] },
  llm_router_routing_decisions_total: { type: 'counter', labels: ['route', 'strategy', 'provider'] },
  llm_router_inflight_requests: { type: 'gauge', labels: ['provider', 'model'] },
  llm_router_llm_router_requests_total: { type: 'counter', labels: ['tier', 'outcome'] },
  llm_router_llm_router_duration_seconds: { type: 'histogram', labels: ['tier'] },
  llm_router_stream_failures_total: { type: 'counter', labels: ['provider', 'model', 'policy'] },
  llm_router_config_reloads_total: { type: 'counter', labels: ['result'] },
};
