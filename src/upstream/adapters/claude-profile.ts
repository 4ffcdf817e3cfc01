/**
 * What a Claude model takes, read from its name once (names carry the version as `claude-<family>-4-5`,
 * `claude-3-7-<family>`, or a date for x.0, `claude-sonnet-4-20250514`; Bedrock's and Vertex's ids too).
 * A name that carries no Claude version gets the oldest rules: no thinking from `reasoning_effort`, prefill,
 * sampling and forced tools sent as asked.
 */
export interface ClaudeProfile {
  /**
   * How it takes extended thinking: with a token budget (3.7, 4.0 to 4.5), or adaptive, the model deciding how
   * much to think at an `output_config.effort` (4.6 on, Mythos, Fable: 4.7 on take nothing else, and 4.6 has the
   * budget form deprecated). Older models answer any `thinking` with a 400.
   */
  readonly thinking: 'budget' | 'adaptive' | undefined;
  /** Thinks when `thinking` is left out: Claude 5 on (Opus 5, Sonnet 5), Mythos and Fable. */
  readonly thinksByDefault: boolean;
  /** Thinks whatever is asked: Fable, Mythos and Claude 5.1 on (Opus 5.5) answer `disabled` with a 400. */
  readonly alwaysThinks: boolean;
  /** Omits the thinking's text unless asked, and takes the `xhigh` effort: Claude 4.7 on. */
  readonly from47: boolean;
  /** Continues a final assistant turn (a prefill): Claude 4.6 on answer it with a 400. */
  readonly takesPrefill: boolean;
  /**
   * Takes `temperature` and `top_p`: Claude 4.7 on (and Mythos, Fable) removed the sampling parameters and answer
   * any non-default value with a 400, so the client's are left out, as other gateways do.
   */
  readonly takesSampling: boolean;
  /** Takes a forced tool (`tool_choice` any or tool): Claude 5.1 on (Fable 5.1, Opus 5.5) answer it with a 400. */
  readonly takesForcedTool: boolean;
}

const CLAUDE_VERSION = /claude-(?:[a-z]+-)?(\d+)(?:-(\d{1,2}))?(?!\d)/;
const LATER_FAMILY = /claude-(?:mythos|fable)/;
/** Profiles by model name: the names are the configuration's, so few; bounded all the same. */
const PROFILES = new Map<string, ClaudeProfile>();

/** Fable, Mythos and Claude 5.1 on: they think whatever they are asked (the LLM router gives them room). */
export function claudeAlwaysThinks(model: string): boolean {
  return claudeProfile(model).alwaysThinks;
}

export function claudeProfile(model: string): ClaudeProfile {
  let profile = PROFILES.get(model);
  if (profile === undefined) {
    profile = readProfile(model);
    if (PROFILES.size < 1024) PROFILES.set(model, profile);
  }
  return profile;
}

function readProfile(model: string): ClaudeProfile {
  const match = CLAUDE_VERSION.exec(model);
  // major × 10 + minor (46 for 4.6); Mythos and Fable count as later than any numbered model.
  const numbered = match === null ? undefined : Number(match[1]) * 10 + Number(match[2] ?? 0);
  const v = LATER_FAMILY.test(model) ? Infinity : (numbered ?? 0);
  return {
    thinking: v >= 46 ? 'adaptive' : v === 37 || (v >= 40 && v <= 45) ? 'budget' : undefined,
    thinksByDefault: v >= 50,
    alwaysThinks: v >= 51,
    from47: v >= 47,
    takesPrefill: v < 46,
    takesSampling: v < 47,
    // A model that always thinks cannot take a forced tool: Anthropic refuses thinking beside one (Fable and
    // Mythos too, which were sent {type: "any"} and thinking together: a 400 on every forced round).
    takesForcedTool: v < 51,
  };
}
