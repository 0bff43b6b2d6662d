// Command aiosfs_client does the clients' common task on a mounted aiosfs, with Go's standard
// library only: no module, no aiosfs code, every step an ordinary file operation.
//
// Usage and build (or make examples):
//
//	aiosfs_client [--max-tokens N] MOUNTPOINT [PROMPT]
//	cd mount_examples/go && go build -o aiosfs_client .
//
// The steps:
//
//  1. mkdir agents/go-PID: creates an agent; config takes {"max_tokens": N}.
//  2. agents/NAME/syscall opened O_RDWR: a transaction. Write the prompt, read the answer to
//     exactly that syscall from the same descriptor.
//  3. agents/NAME/stream, read in a loop while a JSON syscall runs: its tokens as they are
//     generated, then EOF; out then has the same answer.
//  4. store/NAME/notes.txt: written, indexed (sys/store "pending_index" 0), then found by
//     meaning with ls store/NAME/.search/QUERY/.
//  5. rmdir agents/NAME: removes the agent (and the note goes too), even after a failure.
//
// Exit status: 0 on success; 1 with "STEP PATH: ERRNO (message)" on stderr when a file
// operation fails (EINVAL: the kernel rejected a config or a syscall; its reason, from
// agents/NAME/status, follows); 2 on bad usage.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

const (
	prog         = "aiosfs_client"
	note         = "Agents talk to the kernel through files: write a request to syscall, read the answer from out.\n"
	query        = "how do agents talk to the kernel"
	indexTimeout = 60 * time.Second
)

// errnoNames names the errors a mount answers with; the standard library has only their text.
var errnoNames = map[syscall.Errno]string{
	syscall.EPERM: "EPERM", syscall.ENOENT: "ENOENT", syscall.EINTR: "EINTR",
	syscall.EIO: "EIO", syscall.EBADF: "EBADF", syscall.EAGAIN: "EAGAIN",
	syscall.EACCES: "EACCES", syscall.EEXIST: "EEXIST", syscall.EXDEV: "EXDEV",
	syscall.ENOTDIR: "ENOTDIR", syscall.EISDIR: "EISDIR", syscall.EINVAL: "EINVAL",
	syscall.EFBIG: "EFBIG", syscall.ENOSPC: "ENOSPC", syscall.EROFS: "EROFS",
	syscall.ENAMETOOLONG: "ENAMETOOLONG", syscall.ENOTEMPTY: "ENOTEMPTY",
	syscall.ELOOP: "ELOOP", syscall.ENOTCONN: "ENOTCONN", syscall.ETIMEDOUT: "ETIMEDOUT",
	syscall.ENOTSUP: "ENOTSUP",
}

// stepError is a failed step: what the client was doing, on which path, and the errno.
type stepError struct {
	step, path string
	errno      syscall.Errno
	detail     string // set when the failure is the client's own finding, not a system call's
}

func (e *stepError) Error() string {
	name, ok := errnoNames[e.errno]
	if !ok {
		name = fmt.Sprintf("errno %d", int(e.errno))
	}
	detail := e.detail
	if detail == "" {
		detail = e.errno.Error()
	}
	return fmt.Sprintf("%s %s: %s (%s)", e.step, e.path, name, detail)
}

// fail wraps err from a system call as a stepError; an error without an errno (bad JSON in a
// file, say) counts as EIO.
func fail(step, path string, err error) error {
	var se *stepError
	if errors.As(err, &se) {
		return err
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return &stepError{step: step, path: path, errno: syscall.EIO, detail: err.Error()}
	}
	return &stepError{step: step, path: path, errno: errno}
}

// readAll reads f until EOF, handing each chunk to onChunk as it arrives.
func readAll(f *os.File, onChunk func([]byte)) ([]byte, error) {
	var all bytes.Buffer
	buf := make([]byte, 65536)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			all.Write(buf[:n])
			if onChunk != nil {
				onChunk(buf[:n])
			}
		}
		if err == io.EOF {
			return all.Bytes(), nil
		}
		if err != nil {
			return all.Bytes(), err
		}
	}
}

// transaction is step 2: one syscall on one descriptor. The first read submits what was
// written and blocks until its answer is complete, which comes back whole, then EOF.
func transaction(agentDir, prompt string) ([]byte, error) {
	path := filepath.Join(agentDir, "syscall")
	// O_RDWR without O_CREATE or O_TRUNC: the descriptor that asks is the one that hears.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fail("open", path, err)
	}
	defer f.Close()
	// A trailing newline marks the text complete, so a bad syscall fails this write (EINVAL).
	if _, err := f.WriteString(prompt + "\n"); err != nil {
		return nil, fail("write", path, err)
	}
	answer, err := readAll(f, nil)
	if err != nil {
		return nil, fail("read", path, err)
	}
	return answer, nil
}

// streamed is step 3: a JSON syscall whose tokens are read live from stream. A read of stream
// attaches to the agent's oldest unfinished answer, or waits for the next syscall when none
// is; so the read starts before the syscall is submitted, never after (an answer that
// finished first would be missed, and the read would wait for the next one).
func streamed(agentDir, prompt string, maxTokens int) (reads, size int, err error) {
	streamPath := filepath.Join(agentDir, "stream")
	f, err := os.Open(streamPath)
	if err != nil {
		return 0, 0, fail("open", streamPath, err)
	}
	type outcome struct {
		text []byte
		err  error
	}
	live := make(chan outcome, 1)
	started := make(chan struct{})
	go func() {
		close(started)
		text, err := readAll(f, func(chunk []byte) {
			reads++
			os.Stdout.Write(chunk)
		})
		f.Close()
		live <- outcome{text, err}
	}()
	<-started

	// Write-and-close submits it. Should it fail, main removes the agent, and the read above
	// ends with ENOENT.
	syscallPath := filepath.Join(agentDir, "syscall")
	call, _ := json.Marshal(map[string]any{
		"call": "llm", "prompt": prompt, "max_tokens": maxTokens, "temperature": 0.0,
	})
	if err := writeFile(syscallPath, append(call, '\n')); err != nil {
		return 0, 0, err
	}
	got := <-live
	if got.err != nil {
		return 0, 0, fail("read", streamPath, got.err)
	}
	// out hands out undelivered answers oldest first; the transaction's answer was delivered
	// on its own descriptor, so this is the streamed one, whole.
	outPath := filepath.Join(agentDir, "out")
	out, err := os.ReadFile(outPath)
	if err != nil {
		return 0, 0, fail("read", outPath, err)
	}
	if !bytes.Equal(out, got.text) {
		return 0, 0, &stepError{"compare", outPath, syscall.EIO, "out differs from what stream showed"}
	}
	return reads, len(got.text), nil
}

// writeFile writes data in one go and closes; the kernel acts on a config or syscall at close
// (or at the write, once it looks complete) and reports a rejection from either.
func writeFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fail("open", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fail("write", path, err)
	}
	if err := f.Close(); err != nil {
		return fail("close", path, err)
	}
	return nil
}

// readJSON reads a whole file and decodes it into v.
func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fail("read", path, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fail("parse", path, err)
	}
	return nil
}

// search is step 4: write a note into store/, wait until it is indexed, find it by meaning.
func search(mount, name string) error {
	dir := filepath.Join(mount, "store", name)
	notePath := filepath.Join(dir, "notes.txt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fail("mkdir", dir, err)
	}
	// store/ is an ordinary filesystem: create, write, close (the close commits it).
	if err := os.WriteFile(notePath, []byte(note), 0o644); err != nil {
		return fail("write", notePath, err)
	}
	start := time.Now()
	storeInfo := filepath.Join(mount, "sys", "store")
	for {
		var info struct {
			PendingIndex int `json:"pending_index"` // files waiting to be found by meaning
		}
		if err := readJSON(storeInfo, &info); err != nil {
			return err
		}
		if info.PendingIndex == 0 {
			break
		}
		if time.Since(start) > indexTimeout {
			return &stepError{"wait for the index of", notePath, syscall.ETIMEDOUT, "still not indexed after 60 s"}
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Printf("wrote store/%s/notes.txt; indexed after %.1f s\n", name, time.Since(start).Seconds())
	// A query is a directory; its entries are symbolic links RANK-FILENAME to the matches.
	results := filepath.Join(dir, ".search", query)
	entries, err := os.ReadDir(results)
	if err != nil {
		return fail("list", results, err)
	}
	var ranked []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			ranked = append(ranked, e.Name())
		}
	}
	sort.Strings(ranked)
	best := false
	for _, entry := range ranked {
		target, err := os.Readlink(filepath.Join(results, entry))
		if err != nil {
			return fail("readlink", filepath.Join(results, entry), err)
		}
		fmt.Printf("%s -> %s\n", entry, target)
		best = best || entry == "1-notes.txt"
	}
	if !best {
		return &stepError{"search", results, syscall.ENOENT, "notes.txt is not the best match"}
	}
	return nil
}

// lastError is the message of agents/NAME/status's "last_error", or "" if there is none.
func lastError(agentDir string) string {
	var status struct {
		LastError *struct {
			Message string `json:"message"`
		} `json:"last_error"`
	}
	if readJSON(filepath.Join(agentDir, "status"), &status) != nil || status.LastError == nil {
		return ""
	}
	return status.LastError.Message
}

// run does steps 2 to 4 on an agent that exists; main creates and removes it.
func run(mount, name, prompt string, maxTokens int, storeUsed *bool) error {
	agentDir := filepath.Join(mount, "agents", name)
	config := filepath.Join(agentDir, "config")
	if err := writeFile(config, []byte(fmt.Sprintf(`{"max_tokens": %d}`, maxTokens))); err != nil {
		return err
	}
	var settings struct {
		MaxTokens int `json:"max_tokens"`
	}
	if err := readJSON(config, &settings); err != nil {
		return err
	}
	fmt.Printf("config: max_tokens=%d\n", settings.MaxTokens)

	fmt.Printf("--- transaction: agents/%s/syscall ---\n", name)
	answer, err := transaction(agentDir, prompt)
	if err != nil {
		return err
	}
	os.Stdout.Write(answer)

	fmt.Printf("--- stream: agents/%s/stream ---\n", name)
	reads, size, err := streamed(agentDir, "In one sentence: "+prompt, maxTokens)
	if err != nil {
		return err
	}
	fmt.Printf("(stream: %d reads, %d bytes; out has the same answer)\n", reads, size)

	fmt.Printf("--- search: store/%s/.search/%s/ ---\n", name, query)
	*storeUsed = true
	return search(mount, name)
}

func main() {
	flags := flag.NewFlagSet(prog, flag.ContinueOnError)
	maxTokens := flags.Int("max-tokens", 32, "answer length in tokens")
	flags.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s [--max-tokens N] MOUNTPOINT [PROMPT]\n", prog)
	}
	if err := flags.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	args := flags.Args()
	if len(args) < 1 || len(args) > 2 || *maxTokens < 1 {
		flags.Usage()
		os.Exit(2)
	}
	mount, prompt := args[0], "What is a file system? Answer briefly."
	if len(args) == 2 {
		prompt = args[1]
	}

	name := fmt.Sprintf("go-%d", os.Getpid()) // unique, so concurrent runs never share an agent
	agentDir := filepath.Join(mount, "agents", name)
	if err := os.Mkdir(agentDir, 0o700); err != nil { // 1. mkdir creates the agent
		hint := ""
		if errors.Is(err, fs.ErrNotExist) {
			hint = fmt.Sprintf("; is aiosfs mounted at %s?", mount)
		}
		fmt.Fprintf(os.Stderr, "%s: %v%s\n", prog, fail("mkdir", agentDir, err), hint)
		os.Exit(1)
	}
	fmt.Printf("created agent %s\n", name)

	rc := 0
	storeUsed := false
	if err := run(mount, name, prompt, *maxTokens, &storeUsed); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", prog, err)
		var se *stepError
		if errors.As(err, &se) && se.errno == syscall.EINVAL {
			// The kernel's reason for rejecting a config or a syscall is in the agent's status.
			if reason := lastError(agentDir); reason != "" {
				fmt.Fprintf(os.Stderr, "%s: the kernel said: %s\n", prog, reason)
			}
		}
		rc = 1
	}
	if storeUsed {
		storeDir := filepath.Join(mount, "store", name)
		if err := os.RemoveAll(storeDir); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", prog, fail("rm", storeDir, err))
			rc = 1
		} else {
			fmt.Printf("removed store/%s\n", name)
		}
	}
	// 5. rmdir removes the agent, cancels anything it still runs and wakes its readers.
	if err := syscall.Rmdir(agentDir); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", prog, fail("rmdir", agentDir, err))
		rc = 1
	} else {
		fmt.Printf("removed agent %s\n", name)
	}
	os.Exit(rc)
}
