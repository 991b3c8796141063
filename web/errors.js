// The errors the browser runtime raises, each with a message for the user and a stable `code` an app can
// branch on: the twin of engine/errors.py, name for name, plus QuotaError (browser storage) and WorkerError
// (the worker could not start or stopped answering). The worker forwards name and message; webmoe.js
// raises them again as these classes, so `err instanceof webmoe.PackageError` holds in the page.
export class WebmoeError extends Error {
  name = "WebmoeError";
  code = "webmoe_error";
}
export class PackageError extends WebmoeError { name = "PackageError"; code = "package_error"; }      // malformed, corrupt, old format, too big, unreachable
export class PlanError extends WebmoeError { name = "PlanError"; code = "plan_error"; }               // a step does not fit its kernel or the adapter
export class ShaderError extends WebmoeError { name = "ShaderError"; code = "shader_error"; }         // a kernel source or directive is wrong
export class ExpertCacheError extends WebmoeError { name = "ExpertCacheError"; code = "expert_cache_error"; }   // budget or pinned experts cannot work
export class PromptError extends WebmoeError { name = "PromptError"; code = "prompt_error"; }         // prompt, token ids or settings not acceptable
export class OptionError extends WebmoeError { name = "OptionError"; code = "option_error"; }         // an engine option (options.js) not acceptable
export class DeviceError extends WebmoeError { name = "DeviceError"; code = "device_error"; }         // no usable WebGPU adapter, or the device was lost
export class QuotaError extends WebmoeError { name = "QuotaError"; code = "quota_error"; }            // not enough browser storage for the model
export class WorkerError extends WebmoeError { name = "WorkerError"; code = "worker_error"; }         // the engine's worker could not start

export const ERRORS = { PackageError, PlanError, ShaderError, ExpertCacheError, PromptError, OptionError, DeviceError,
                        QuotaError, WorkerError };

// An error as the worker forwarded it ({name, message}) -> an instance of the class of that name (a
// TypeError stays a TypeError; an unknown name a WebmoeError keeping it).
export function revive(name, message) {
  const Class = ERRORS[name] || globalThis[name];
  if (typeof Class === "function" && (Class === Error || Class.prototype instanceof Error)) return new Class(message);
  const err = new WebmoeError(message);
  err.name = name || "Error";
  return err;
}
