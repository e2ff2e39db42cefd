/**
 * `items` grouped by `key`: each key's items in their order, the keys in first-seen order after
 * those already in `into` (the map the groups are added to and returned; a new one by default). O(n).
 */
export function groupBy<T, K>(items: Iterable<T>, key: (item: T) => K, into: Map<K, T[]> = new Map()): Map<K, T[]> {
  for (const item of items) {
    const k = key(item);
    const group = into.get(k);
    if (group) group.push(item);
    else into.set(k, [item]);
  }
  return into;
}
