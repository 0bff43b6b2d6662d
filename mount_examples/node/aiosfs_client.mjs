#!/usr/bin/env node
// aiosfs_client.mjs: the clients' common task on a mounted aiosfs, with node:fs/promises only.
//
//   usage: node aiosfs_client.mjs [--max-tokens N] MOUNTPOINT [PROMPT]
//
// No npm package and no aiosfs code: every step is an ordinary file operation.
//
//   1. mkdir agents/node-PID              creates an agent; config takes {"max_tokens": N}
//   2. agents/NAME/syscall opened "r+"    a transaction: write the prompt, read the answer to
//                                         exactly that syscall from the same handle
//   3. agents/NAME/stream                 read in a loop while a JSON syscall runs: its tokens
//                                         as they are generated, then EOF; out then has the
//                                         same answer
//   4. store/NAME/notes.txt               written, indexed (sys/store "pending_index" 0), then
//                                         found by meaning: ls store/NAME/.search/QUERY/
//   5. rmdir agents/NAME                  removes the agent (and the note), even after a failure
//
// Exit status: 0 on success; 1 with "STEP PATH: ERRNO (message)" on stderr when a file
// operation fails (EINVAL: the kernel rejected a config or a syscall, and agents/NAME/status
// says why under "last_error"); 2 on bad usage.

import { constants } from "node:fs";
import { mkdir, open, readFile, readdir, readlink, rm, rmdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { parseArgs } from "node:util";

const PROG = "aiosfs_client.mjs";
const NOTE = "Agents talk to the kernel through files: write a request to syscall, read the answer from out.\n";
const QUERY = "how do agents talk to the kernel";
const INDEX_TIMEOUT_MS = 60_000;

/** A failed step, named so that the message says what the client was doing and where. */
class StepError extends Error {
  constructor(step, path, cause) {
    const code = cause?.code ?? "EIO";
    super(`${step} ${path}: ${code} (${cause?.message?.split(",")[0]?.replace(/^[A-Z]+: /, "") ?? "failed"})`);
    this.code = code;
  }
}

/** Run one file operation; an error becomes a StepError naming the step and the path. */
async function step(what, path, fn) {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof StepError) throw e;
    throw new StepError(what, path, e);
  }
}

/** Read a handle until EOF, handing each chunk to onChunk as it arrives. */
async function readAll(handle, onChunk = () => {}) {
  const chunks = [];
  const buf = Buffer.alloc(65536);
  for (;;) {
    // position null: read from the current position (stream is not seekable)
    const { bytesRead } = await handle.read(buf, 0, buf.length, null);
    if (bytesRead === 0) break;
    const chunk = Buffer.from(buf.subarray(0, bytesRead));
    chunks.push(chunk);
    onChunk(chunk);
  }
  return Buffer.concat(chunks);
}

/** 2. One syscall on one handle: write the prompt, then read; the read submits the syscall and
 * blocks until its answer is complete, which comes back whole, then EOF. */
async function transaction(agentDir, prompt) {
  const path = join(agentDir, "syscall");
  // "r+" is O_RDWR without O_CREAT or O_TRUNC: the handle that asks is the handle that hears.
  const handle = await step("open", path, () => open(path, "r+"));
  try {
    // A trailing newline marks the text complete, so a bad syscall fails this write (EINVAL).
    await step("write", path, () => handle.write(`${prompt}\n`));
    return await step("read", path, () => readAll(handle));
  } finally {
    await handle.close().catch(() => {});
  }
}

/** 3. A JSON syscall, its tokens read live from stream.
 *
 * A read of stream attaches to the agent's oldest unfinished answer, or waits for the next
 * syscall when none is; so the read starts before the syscall is submitted, never after (an
 * answer that finished first would be missed, and the read would wait for the next one). */
async function streamed(agentDir, prompt, maxTokens) {
  const streamPath = join(agentDir, "stream");
  const syscallPath = join(agentDir, "syscall");
  const handle = await step("open", streamPath, () => open(streamPath, constants.O_RDONLY));
  let reads = 0;
  let settled = false;
  const live = step("read", streamPath, () =>
    readAll(handle, (chunk) => {
      reads += 1;
      process.stdout.write(chunk);
    }),
  );
  // Should the submission fail, main removes the agent, and this read ends with ENOENT.
  live.catch(() => {}).finally(() => (settled = true));
  try {
    const call = { call: "llm", prompt, max_tokens: maxTokens, temperature: 0.0 };
    // write-and-close submits it (writeFile opens with O_TRUNC, which syscall ignores)
    await step("write", syscallPath, () => writeFile(syscallPath, `${JSON.stringify(call)}\n`));
    const text = await live;
    // out hands out undelivered answers oldest first; the transaction's answer was delivered
    // on its own handle, so this is the streamed one, whole.
    const outPath = join(agentDir, "out");
    const out = await step("read", outPath, () => readFile(outPath));
    if (!out.equals(text)) {
      throw new StepError("compare", outPath, { code: "EIO", message: "out differs from what stream showed" });
    }
    return { reads, bytes: text.length };
  } finally {
    // A FileHandle closes once its reads are done: wait for that only if the read has ended.
    const closing = handle.close().catch(() => {});
    if (settled) await closing;
  }
}

/** The number in sys/store's "pending_index": how many files wait to be found by meaning. */
async function pendingIndex(mount) {
  const path = join(mount, "sys", "store");
  const text = await step("read", path, () => readFile(path, "utf8"));
  return JSON.parse(text).pending_index;
}

/** 4. Write a note into store/, wait until it is indexed, find it by meaning. */
async function search(mount, name) {
  const dir = join(mount, "store", name);
  const note = join(dir, "notes.txt");
  await step("mkdir", dir, () => mkdir(dir));
  await step("write", note, () => writeFile(note, NOTE));
  const start = Date.now();
  while ((await pendingIndex(mount)) > 0) {
    if (Date.now() - start > INDEX_TIMEOUT_MS) {
      throw new StepError("wait for the index of", note, { code: "ETIMEDOUT", message: "still not indexed after 60 s" });
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  console.log(`wrote store/${name}/notes.txt; indexed after ${((Date.now() - start) / 1000).toFixed(1)} s`);
  // A query is a directory; its entries are symbolic links RANK-FILENAME to the matches.
  const results = join(dir, ".search", QUERY);
  const names = await step("list", results, () => readdir(results));
  const ranked = names.filter((n) => !n.startsWith(".")).sort();
  for (const entry of ranked) {
    const target = await step("readlink", join(results, entry), () => readlink(join(results, entry)));
    console.log(`${entry} -> ${target}`);
  }
  if (!ranked.includes("1-notes.txt")) {
    throw new StepError("search", results, { code: "ENOENT", message: "notes.txt is not the best match" });
  }
}

/** The message of agents/NAME/status's "last_error", or null if it cannot be read. */
async function lastError(agentDir) {
  try {
    const status = JSON.parse(await readFile(join(agentDir, "status"), "utf8"));
    return status.last_error?.message ?? null;
  } catch {
    return null;
  }
}

function usage(message) {
  process.stderr.write(`${PROG}: ${message}\nusage: node ${PROG} [--max-tokens N] MOUNTPOINT [PROMPT]\n`);
  return 2;
}

async function main() {
  let parsed;
  try {
    parsed = parseArgs({ options: { "max-tokens": { type: "string", default: "32" } }, allowPositionals: true });
  } catch (e) {
    return usage(e.message);
  }
  const [mount, prompt = "What is a file system? Answer briefly.", ...extra] = parsed.positionals;
  const maxTokens = Number(parsed.values["max-tokens"]);
  if (mount === undefined || extra.length > 0) return usage("expected MOUNTPOINT and at most one PROMPT");
  if (!Number.isInteger(maxTokens) || maxTokens < 1) return usage("--max-tokens takes a positive integer");

  const agents = join(mount, "agents");
  const name = `node-${process.pid}`; // unique, so concurrent runs never share an agent
  const agentDir = join(agents, name);
  try {
    await mkdir(agentDir); // 1. mkdir creates the agent
  } catch (e) {
    const hint = e.code === "ENOENT" ? `; is aiosfs mounted at ${mount}?` : "";
    process.stderr.write(`${PROG}: ${new StepError("mkdir", agentDir, e).message}${hint}\n`);
    return 1;
  }
  console.log(`created agent ${name}`);

  let rc = 0;
  let storeDir = null;
  try {
    const config = join(agentDir, "config");
    await step("write", config, () => writeFile(config, JSON.stringify({ max_tokens: maxTokens })));
    const settings = JSON.parse(await step("read", config, () => readFile(config, "utf8")));
    console.log(`config: max_tokens=${settings.max_tokens}`);

    console.log(`--- transaction: agents/${name}/syscall ---`);
    process.stdout.write(await transaction(agentDir, prompt));

    console.log(`--- stream: agents/${name}/stream ---`);
    const { reads, bytes } = await streamed(agentDir, `In one sentence: ${prompt}`, maxTokens);
    console.log(`(stream: ${reads} reads, ${bytes} bytes; out has the same answer)`);

    console.log(`--- search: store/${name}/.search/${QUERY}/ ---`);
    storeDir = join(mount, "store", name);
    await search(mount, name);
  } catch (e) {
    process.stderr.write(`${PROG}: ${e instanceof StepError ? e.message : e.stack}\n`);
    if (e.code === "EINVAL") {
      // The kernel's reason for rejecting a config or a syscall is in the agent's status.
      const reason = await lastError(agentDir);
      if (reason) process.stderr.write(`${PROG}: the kernel said: ${reason}\n`);
    }
    rc = 1;
  } finally {
    if (storeDir !== null) {
      try {
        await rm(storeDir, { recursive: true, force: true });
        console.log(`removed store/${name}`);
      } catch (e) {
        process.stderr.write(`${PROG}: ${new StepError("rm", storeDir, e).message}\n`);
        rc = 1;
      }
    }
    try {
      await rmdir(agentDir); // 5. rmdir removes the agent and cancels anything it still runs
      console.log(`removed agent ${name}`);
    } catch (e) {
      process.stderr.write(`${PROG}: ${new StepError("rmdir", agentDir, e).message}\n`);
      rc = 1;
    }
  }
  return rc;
}

process.exitCode = await main();
