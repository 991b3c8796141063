// Plan expressions, as in engine/expr.py: a number, a variable name, or [name, mul, div] = ceil(v * mul / div).
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
  throw new Error(`bad plan expression ${JSON.stringify(expr)}`);
}

export function isDynamic(expr) {
  return typeof expr === "string" || Array.isArray(expr);
}
