// The errors the browser runtime raises, each with a message for the user: the twin of engine/errors.py,
// name for name, plus QuotaError (browser storage). The worker forwards `name`, so the page can tell them apart.
export class PackageError extends Error { name = "PackageError"; }     // malformed, corrupt, old format, too big
export class PlanError extends Error { name = "PlanError"; }           // a step does not fit its kernel or the adapter
export class ShaderError extends Error { name = "ShaderError"; }       // a kernel source or directive is wrong
export class ExpertCacheError extends Error { name = "ExpertCacheError"; }   // budget or pinned experts cannot work
export class PromptError extends Error { name = "PromptError"; }       // prompt, token ids or settings not acceptable
export class OptionError extends Error { name = "OptionError"; }       // an engine option (options.js) not acceptable
export class DeviceError extends Error { name = "DeviceError"; }       // no usable WebGPU adapter
export class QuotaError extends Error { name = "QuotaError"; }         // not enough browser storage for the model
