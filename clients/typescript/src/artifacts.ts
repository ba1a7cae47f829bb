/**
 * How artifact bytes travel (ExecutorService.UploadArtifact, both DownloadArtifact calls): the
 * chunk size and the checks of a download, shared by the client and the agent SDK, as
 * cpa_client/artifact_chunks.py is in Python. No Node module here (the web entry imports it):
 * the digest is Web Crypto's, global in Node 20 and in browsers.
 */
import type { Artifact } from "./gen/cpa/common/v1/artifact_pb.js";

/** Most bytes in one chunk message (the contract's "at most 1 MiB"); the server refuses more. */
export const MAX_CHUNK_BYTES = 1024 * 1024;

/**
 * Downloaded bytes do not match their metadata (size or sha256), or the download broke the
 * contract (no metadata first, the metadata twice, more bytes than its size).
 */
export class ArtifactCheckError extends Error {
  override readonly name = "ArtifactCheckError";
}

/** An artifact's metadata and its bytes, checked against its size and sha256. */
export interface ArtifactData {
  readonly artifact: Artifact;
  readonly data: Uint8Array;
}

/** A part of either service's DownloadArtifactResponse (the same shape). */
export interface DownloadPart {
  readonly kind:
    | { readonly case: "artifact"; readonly value: Artifact }
    | { readonly case: "chunk"; readonly value: Uint8Array }
    | { readonly case: undefined; readonly value?: undefined };
}

/** `data` in chunks of at most `size` bytes: views into it, never copies. */
export function* split(data: Uint8Array, size: number = MAX_CHUNK_BYTES): Generator<Uint8Array> {
  for (let start = 0; start < data.length; start += size) yield data.subarray(start, start + size);
}

/** Lower-case hex SHA-256 of `data`. */
export async function sha256Hex(data: Uint8Array): Promise<string> {
  // digest() takes views of a plain ArrayBuffer; protobuf-es and Node hand those (no copy).
  const plain = data.buffer instanceof ArrayBuffer
    ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
    : new Uint8Array(data);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", plain));
  return Array.from(digest, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

/**
 * The whole artifact of a download in memory, checked as it arrives: the first part must be the
 * metadata, no more bytes than its size may come, and at the end size and sha256 must match
 * (ArtifactCheckError otherwise). Errors of the call itself pass through unchanged.
 */
export async function downloadBytes(parts: AsyncIterable<DownloadPart>): Promise<ArtifactData> {
  let artifact: Artifact | undefined;
  let data = new Uint8Array(0);
  let received = 0;
  for await (const part of parts) {
    if (artifact === undefined) {
      if (part.kind.case !== "artifact") {
        throw new ArtifactCheckError("the download did not start with the artifact's metadata");
      }
      artifact = part.kind.value;
      const size = Number(artifact.sizeBytes);
      // The size is the server's word: never allocate beyond it, and refuse more bytes.
      data = new Uint8Array(Number.isSafeInteger(size) && size >= 0 ? size : 0);
      continue;
    }
    if (part.kind.case !== "chunk") throw new ArtifactCheckError("the download sent its metadata twice");
    const chunk = part.kind.value;
    if (received + chunk.length > data.length) {
      throw new ArtifactCheckError(`artifact '${artifact.name}': more than its ${artifact.sizeBytes} bytes arrived`);
    }
    data.set(chunk, received);
    received += chunk.length;
  }
  if (artifact === undefined) throw new ArtifactCheckError("the download ended before the artifact's metadata");
  if (BigInt(received) !== artifact.sizeBytes) {
    throw new ArtifactCheckError(`artifact '${artifact.name}': ${received} bytes arrived, ${artifact.sizeBytes} expected`);
  }
  const digest = await sha256Hex(data);
  if (digest !== artifact.sha256) {
    throw new ArtifactCheckError(`artifact '${artifact.name}': the bytes have sha256 ${digest}, not ${artifact.sha256}`);
  }
  return { artifact, data };
}
