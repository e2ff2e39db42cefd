/**
 * The clients whose plans must be re-solved: an insertion-ordered set of ids whose front is
 * taken in O(1). A `Set` keeps the order too, but taking its front (`values().next()` then
 * `delete`) steps over every slot the earlier deletions left until the table is rebuilt: a
 * pass over 10,000 clients spent about 20 ms in that alone, 30,000 about 190 ms (quadratic).
 *
 * An id added again after it was taken or deleted goes to the back, as in a `Set`.
 */
export class DirtyQueue {
  /** The live ids, each with the stamp of its entry in `ids` (older entries of the same id are stale). */
  private readonly live = new Map<string, number>();
  private ids: string[] = [];
  private stamps: number[] = [];
  private head = 0;
  private nextStamp = 0;

  get size(): number {
    return this.live.size;
  }

  /** Adds `id` at the back, unless it is already queued (then it keeps its place). */
  add(id: string): void {
    if (this.live.has(id)) return;
    const stamp = this.nextStamp++;
    this.live.set(id, stamp);
    this.ids.push(id);
    this.stamps.push(stamp);
  }

  delete(id: string): boolean {
    return this.live.delete(id);
  }

  /** Takes the front id out, or undefined when empty. Amortised O(1). */
  shift(): string | undefined {
    while (this.head < this.ids.length) {
      const i = this.head++;
      const id = this.ids[i];
      if (this.live.get(id) === this.stamps[i]) {
        this.live.delete(id);
        this.compact();
        return id;
      }
    }
    this.compact();
    return undefined;
  }

  /** The queued ids, front first (a copy). */
  toArray(): string[] {
    const out: string[] = [];
    for (let i = this.head; i < this.ids.length; i++) if (this.live.get(this.ids[i]) === this.stamps[i]) out.push(this.ids[i]);
    return out;
  }

  /** Drops the taken and stale entries once they are most of the arrays. */
  private compact(): void {
    if (this.head === this.ids.length) {
      this.ids = [];
      this.stamps = [];
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.ids.length) {
      this.ids = this.ids.slice(this.head);
      this.stamps = this.stamps.slice(this.head);
      this.head = 0;
    }
  }
}
