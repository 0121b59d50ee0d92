//go:build ignore

// Fake OpenRouter for benchmarks: stdlib only, built with `go build -o fakeup fake_upstream.go`.
// Serves chat completions (SSE or JSON), /models, /key, and /bench/stats counters.
package main

import (
	"encoding/json"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// wrap is the server's handler around the mux: HTTP/2 without TLS (h2c) too when fake_h2c.go
// is built in, else as is (HTTP/1.1 only).
var wrap = func(h http.Handler) http.Handler { return h }

// Bytes of one SSE chunk; the stream is n of these followed by doneEvent.
var chunkEvent = []byte(`data: {"id":"gen-1","object":"chat.completion.chunk","created":1,"model":"m",` +
	`"choices":[{"index":0,"delta":{"content":"tok"},"finish_reason":null}]}` + "\n\n")

// The stream's end as OpenRouter sends it: one last chunk with empty choices and the usage of
// the whole answer, then [DONE].
var doneEvent = []byte(`data: {"id":"gen-1","object":"chat.completion.chunk","created":1,"model":"m",` +
	`"choices":[],"usage":` + usageJSON + "}\n\ndata: [DONE]\n\n")

// OpenRouter's usage object: token counts, their details and the cost in USD.
const usageJSON = `{"prompt_tokens":12,"completion_tokens":14,"total_tokens":26,"cost":0.00017,` +
	`"is_byok":false,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},` +
	`"completion_tokens_details":{"reasoning_tokens":0,"image_tokens":0},` +
	`"cost_details":{"upstream_inference_cost":null}}`

// A ~600-byte non-stream answer, built once.
var completionBody = []byte(`{"id":"gen-1","object":"chat.completion","created":1,"model":"m",` +
	`"provider":"fake","system_fingerprint":null,"choices":[{"index":0,"logprobs":null,` +
	`"finish_reason":"stop","native_finish_reason":"stop","message":{"role":"assistant",` +
	`"content":"Hello! This is the fake upstream answering a benchmark request.","refusal":null,` +
	`"reasoning":null}}],"usage":` + usageJSON + `}`)

var modelsBody = []byte(`{"data":[{"id":"a/b","canonical_slug":"a/b","name":"A: B","created":1,` +
	`"description":"fake model","context_length":8192,"architecture":{"modality":"text->text"},` +
	`"pricing":{"prompt":"0","completion":"0"},"top_provider":{"context_length":8192}}]}`)

var keyBody = []byte(`{"data":{"label":"x","limit":null,"limit_remaining":null,"usage":0,"is_free_tier":false}}`)

var processingComment = []byte(": OPENROUTER PROCESSING\n\n")

// Counters read back by the runner (GET /bench/stats) as evidence of what the proxy sent.
var stats struct {
	ChatStream, ChatJSON, Models, Key, Unauthorized, BadBody int64
	StreamsDone, StreamsAborted, Active, MaxActive           int64
}

// benchParams are the optional knobs a request may carry in its JSON body.
type benchParams struct {
	Stream     bool `json:"stream"`
	Chunks     *int `json:"bench_chunks"`
	IntervalMs *int `json:"bench_interval_ms"`
	Processing bool `json:"bench_processing"`
}

// intParam picks the body field, then the X-Bench-* header, then the query, then def.
func intParam(body *int, r *http.Request, header, query string, def int) int {
	if body != nil {
		return *body
	}
	for _, s := range []string{r.Header.Get(header), r.URL.Query().Get(query)} {
		if v, err := strconv.Atoi(s); err == nil {
			return v
		}
	}
	return def
}

func authorized(w http.ResponseWriter, r *http.Request) bool {
	a := r.Header.Get("Authorization")
	if len(a) > 7 && a[:7] == "Bearer " {
		return true
	}
	atomic.AddInt64(&stats.Unauthorized, 1)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnauthorized)
	w.Write([]byte(`{"error":{"message":"No auth credentials found","code":401}}`))
	return false
}

func chat(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	if !authorized(w, r) {
		return
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	var p benchParams
	if err == nil {
		err = json.Unmarshal(raw, &p)
	}
	if err != nil {
		atomic.AddInt64(&stats.BadBody, 1)
		http.Error(w, `{"error":{"message":"bad JSON body","code":400}}`, http.StatusBadRequest)
		return
	}
	if !p.Stream {
		atomic.AddInt64(&stats.ChatJSON, 1)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(completionBody)))
		w.Write(completionBody)
		return
	}
	atomic.AddInt64(&stats.ChatStream, 1)
	n := intParam(p.Chunks, r, "X-Bench-Chunks", "chunks", 20)
	ms := intParam(p.IntervalMs, r, "X-Bench-Interval-Ms", "interval_ms", 10)
	processing := p.Processing || r.Header.Get("X-Bench-Processing") == "1" ||
		r.URL.Query().Get("processing") == "1"
	stream(w, r, n, time.Duration(ms)*time.Millisecond, processing)
}

// stream sends chunk i at start+(i+1)*interval (an absolute schedule, so a busy machine does not
// make the fake drift), flushing each, then [DONE]; expected duration is n*interval.
// processing: OpenRouter's other shape, a ": OPENROUTER PROCESSING" comment first and then the
// first chunk at once (chunk i at start+i*interval; expected duration (n-1)*interval).
func stream(w http.ResponseWriter, r *http.Request, n int, interval time.Duration, processing bool) {
	active := atomic.AddInt64(&stats.Active, 1)
	defer atomic.AddInt64(&stats.Active, -1)
	for {
		old := atomic.LoadInt64(&stats.MaxActive)
		if active <= old || atomic.CompareAndSwapInt64(&stats.MaxActive, old, active) {
			break
		}
	}
	fl, _ := w.(http.Flusher)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	fl.Flush()
	start := time.Now()
	if processing {
		w.Write(processingComment)
		fl.Flush()
		start = start.Add(-interval)
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for i := 0; i < n; i++ {
		timer.Reset(time.Until(start.Add(time.Duration(i+1) * interval)))
		select {
		case <-r.Context().Done(): // the proxy hung up: stop like OpenRouter would
			atomic.AddInt64(&stats.StreamsAborted, 1)
			return
		case <-timer.C:
		}
		if _, err := w.Write(chunkEvent); err != nil {
			atomic.AddInt64(&stats.StreamsAborted, 1)
			return
		}
		fl.Flush()
	}
	w.Write(doneEvent)
	fl.Flush()
	atomic.AddInt64(&stats.StreamsDone, 1)
}

func fixed(counter *int64, body []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !authorized(w, r) {
			return
		}
		atomic.AddInt64(counter, 1)
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	}
}

func statsHandler(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost { // POST /bench/stats resets the counters
		for _, c := range []*int64{&stats.ChatStream, &stats.ChatJSON, &stats.Models, &stats.Key,
			&stats.Unauthorized, &stats.BadBody, &stats.StreamsDone, &stats.StreamsAborted} {
			atomic.StoreInt64(c, 0)
		}
		atomic.StoreInt64(&stats.MaxActive, atomic.LoadInt64(&stats.Active))
	}
	out := map[string]int64{
		"chat_stream": atomic.LoadInt64(&stats.ChatStream), "chat_json": atomic.LoadInt64(&stats.ChatJSON),
		"models": atomic.LoadInt64(&stats.Models), "key": atomic.LoadInt64(&stats.Key),
		"unauthorized": atomic.LoadInt64(&stats.Unauthorized), "bad_body": atomic.LoadInt64(&stats.BadBody),
		"streams_done":    atomic.LoadInt64(&stats.StreamsDone),
		"streams_aborted": atomic.LoadInt64(&stats.StreamsAborted),
		"active":          atomic.LoadInt64(&stats.Active), "max_active": atomic.LoadInt64(&stats.MaxActive),
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address (port 0 = any free port)")
	flag.Parse()
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/chat/completions", chat)
	mux.HandleFunc("/api/v1/models", fixed(&stats.Models, modelsBody))
	mux.HandleFunc("/api/v1/key", fixed(&stats.Key, keyBody))
	mux.HandleFunc("/api/v1/auth/key", fixed(&stats.Key, keyBody))
	mux.HandleFunc("/bench/stats", statsHandler)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	// The runner reads this line to learn the port.
	log.SetFlags(0)
	log.Printf("listening %s", ln.Addr())
	srv := &http.Server{Handler: wrap(mux), ErrorLog: log.New(io.Discard, "", 0)}
	log.Fatal(srv.Serve(ln))
}
