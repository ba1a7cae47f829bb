/** RequestQueue: the agent stream's outgoing messages, an async iterable Connect reads from. */

export class RequestQueue<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private closed = false;
  private wake: (() => void) | undefined;

  push(item: T): void {
    if (this.closed) return; // the stream is gone; the outbox keeps what must be sent again
    this.items.push(item);
    this.wake?.();
  }

  /** Ends the iteration once the queued items are read (the stream is half-closed). */
  close(): void {
    this.closed = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<T, void, undefined> {
    for (;;) {
      const item = this.items.shift();
      if (item !== undefined) {
        yield item;
        continue;
      }
      if (this.closed) return;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }
}
