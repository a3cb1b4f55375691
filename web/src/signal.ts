/** A value that components can watch: `s.value = x` re-renders every component that called `s.use()`. */
import { useEffect, useState } from 'preact/hooks';

export interface Signal<T> {
  value: T;
  subscribe(l: (v: T) => void): () => void;
  use(): T;
}

export function signal<T>(initial: T): Signal<T> {
  let current = initial;
  const listeners = new Set<(v: T) => void>();
  const s: Signal<T> = {
    get value() {
      return current;
    },
    set value(v: T) {
      if (Object.is(v, current)) return;
      current = v;
      for (const l of [...listeners]) l(v);
    },
    subscribe(l) {
      listeners.add(l);
      return () => listeners.delete(l);
    },
    use() {
      const [v, set] = useState(current);
      useEffect(() => {
        set(current);
        return s.subscribe((nv) => set(() => nv));
      }, []);
      return v;
    },
  };
  return s;
}
