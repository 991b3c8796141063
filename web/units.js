// Byte counts in words, as engine/memory.py's gib() writes them natively (messages match across twins).
export const mib = (n) => `${(n / 2 ** 20).toFixed(1)} MiB`;
export const gib = (n) => (n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : mib(n));
