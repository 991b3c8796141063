// Plan expressions, as in format/expr.py: a number, a variable name, [name, mul, div] = ceil(v * mul / div),
// or {min: [a, b]}, the smaller of two expressions.
export function evaluate(expr, env) {
  if (typeof expr === "number") return expr;
  if (typeof expr === "string") {
    if (!(expr in env)) throw new Error(`plan variable ${expr} is not set`);
    return env[expr];
  }
  if (Array.isArray(expr) && expr.length === 3 && typeof expr[0] === "string") {
    const [name, mul, div] = expr;
    return Math.ceil((evaluate(name, env) * mul) / div);
  }
  if (expr && typeof expr === "object" && Array.isArray(expr.min) && expr.min.length === 2 && Object.keys(expr).length === 1) {
    return Math.min(evaluate(expr.min[0], env), evaluate(expr.min[1], env));
  }
  throw new Error(`bad plan expression ${JSON.stringify(expr)}`);
}

// The variables an expression reads (format/expr.py's variables()).
export function variables(expr) {
  if (typeof expr === "string") return new Set([expr]);
  if (Array.isArray(expr)) return new Set([expr[0]]);
  if (expr !== null && typeof expr === "object") return new Set((expr.min || []).flatMap((e) => [...variables(e)]));
  return new Set();
}

export function isDynamic(expr) {
  return typeof expr === "string" || Array.isArray(expr) || (expr !== null && typeof expr === "object");
}
