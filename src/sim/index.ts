export { startSimulator, type RecordedRequest, type Simulator } from './server.js';
export {
  DEFAULT_BEHAVIOUR,
  parseSimArgs,
  resolveOptions,
  type SimBehaviour,
  type SimKind,
  type SimOptions,
} from './options.js';
