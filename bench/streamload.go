//go:build ignore

// Streaming load client: runs n SSE chat requests, c at a time, and prints one JSON summary
// (time to first chunk, total time, lateness vs chunks*interval, completeness, streams/s).
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A content chunk (not the usage chunk at the end, whose choices are empty).
var chunkPrefix = []byte(`data: {"id":"gen-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{`)
var donePrefix = []byte("data: [DONE]")

// result of one stream; durations in seconds from the moment the request was sent.
type result struct {
	status  int
	connect float64 // -1 when the connection was reused
	ttfc    float64 // first body byte that belongs to a "data:" event
	total   float64
	chunks  int
	bytes   int
	done    bool
	err     string
}

type config struct {
	url, auth, model       string
	c, n, chunks, interval int
	rampMs, timeoutS       int
	processing             bool
}

func main() {
	var cf config
	flag.StringVar(&cf.url, "url", "", "chat completions URL")
	flag.StringVar(&cf.auth, "auth", "Bearer bench-client", "Authorization header value")
	flag.StringVar(&cf.model, "model", "a/b", "model in the request body")
	flag.IntVar(&cf.c, "c", 200, "concurrent streams")
	flag.IntVar(&cf.n, "n", 1000, "total streams")
	flag.IntVar(&cf.chunks, "chunks", 20, "chunks per stream (bench_chunks)")
	flag.IntVar(&cf.interval, "interval-ms", 10, "delay between chunks (bench_interval_ms)")
	flag.IntVar(&cf.rampMs, "ramp-ms", 0, "spread the first request of each worker over this many ms")
	flag.IntVar(&cf.timeoutS, "timeout-s", 120, "give up on the whole run after this many seconds")
	flag.BoolVar(&cf.processing, "processing", false,
		"ask the fake for a ': OPENROUTER PROCESSING' comment, then the first chunk at once (bench_processing)")
	flag.Parse()
	if cf.url == "" || cf.c < 1 || cf.n < 1 {
		fmt.Fprintln(os.Stderr, "usage: streamload -url URL [-c C] [-n N] ...")
		os.Exit(2)
	}
	if cf.c > cf.n {
		cf.c = cf.n
	}
	json.NewEncoder(os.Stdout).Encode(run(cf))
}

// run starts c workers that take stream numbers from a shared counter until n are done.
func run(cf config) map[string]any {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 30 * time.Second}).DialContext,
		MaxIdleConns:        cf.c,
		MaxIdleConnsPerHost: cf.c,
		DisableCompression:  true,
		TLSClientConfig:     &tls.Config{},
		ForceAttemptHTTP2:   false,
	}
	client := &http.Client{Transport: tr}
	body, _ := json.Marshal(map[string]any{
		"model": cf.model, "stream": true,
		"messages":     []map[string]string{{"role": "user", "content": "bench"}},
		"bench_chunks": cf.chunks, "bench_interval_ms": cf.interval,
		"bench_processing": cf.processing,
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(cf.timeoutS)*time.Second)
	defer cancel()
	results := make([]result, cf.n)
	var next int64 = -1
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < cf.c; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			if cf.rampMs > 0 {
				time.Sleep(time.Duration(cf.rampMs) * time.Millisecond * time.Duration(w) / time.Duration(cf.c))
			}
			for {
				i := atomic.AddInt64(&next, 1)
				if i >= int64(cf.n) {
					return
				}
				results[i] = one(ctx, client, cf, body)
			}
		}(w)
	}
	wg.Wait()
	wall := time.Since(start).Seconds()
	tr.CloseIdleConnections()
	return summarize(cf, results, wall)
}

// one sends a single streaming request and reads it to the end.
func one(ctx context.Context, client *http.Client, cf config, body []byte) result {
	r := result{connect: -1}
	var connStart time.Time
	trace := &httptrace.ClientTrace{
		ConnectStart: func(string, string) { connStart = time.Now() },
		ConnectDone: func(string, string, error) {
			r.connect = time.Since(connStart).Seconds()
		},
	}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), "POST", cf.url,
		bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Authorization", cf.auth)
	req.Header.Set("X-Bench-Chunks", fmt.Sprint(cf.chunks))
	req.Header.Set("X-Bench-Interval-Ms", fmt.Sprint(cf.interval))
	t0 := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		r.err = shortErr(err)
		r.total = time.Since(t0).Seconds()
		return r
	}
	defer resp.Body.Close()
	r.status = resp.StatusCode
	var buf bytes.Buffer
	chunk := make([]byte, 16384)
	for {
		n, rerr := resp.Body.Read(chunk)
		if n > 0 {
			buf.Write(chunk[:n])
			if r.ttfc == 0 && bytes.Contains(buf.Bytes(), []byte("data:")) {
				r.ttfc = time.Since(t0).Seconds()
			}
		}
		if rerr != nil {
			if rerr != io.EOF {
				r.err = shortErr(rerr)
			}
			break
		}
	}
	r.total = time.Since(t0).Seconds()
	b := buf.Bytes()
	r.bytes = len(b)
	r.chunks = bytes.Count(b, chunkPrefix)
	r.done = bytes.Contains(b, donePrefix)
	if r.status != 200 && r.err == "" {
		r.err = fmt.Sprintf("HTTP %d: %.120s", r.status, strings.TrimSpace(string(b)))
	}
	return r
}

// shortErr drops the URL from error text so errors group well.
func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && strings.HasPrefix(s, "Post ") {
		s = s[i+2:]
	}
	return s
}

func pct(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return -1
	}
	i := int(p/100*float64(len(xs))+0.5) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(xs) {
		i = len(xs) - 1
	}
	return xs[i]
}

// dist summarizes seconds as milliseconds.
func dist(xs []float64) map[string]float64 {
	sort.Float64s(xs)
	ms := func(v float64) float64 { return float64(int64(v*1e6)) / 1e3 }
	if len(xs) == 0 {
		return map[string]float64{"n": 0}
	}
	return map[string]float64{"n": float64(len(xs)), "p50": ms(pct(xs, 50)), "p90": ms(pct(xs, 90)),
		"p99": ms(pct(xs, 99)), "max": ms(xs[len(xs)-1])}
}

// The stream's end as the fake sends it (bench/fake_upstream.go's doneEvent): a last chunk with
// the usage of the whole answer, then [DONE].
var usageEnd = `data: {"id":"gen-1","object":"chat.completion.chunk","created":1,"model":"m",` +
	`"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":14,"total_tokens":26,"cost":0.00017,` +
	`"is_byok":false,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},` +
	`"completion_tokens_details":{"reasoning_tokens":0,"image_tokens":0},` +
	`"cost_details":{"upstream_inference_cost":null}}}` + "\n\ndata: [DONE]\n\n"

func summarize(cf config, rs []result, wall float64) map[string]any {
	expected := float64(cf.chunks*cf.interval) / 1000
	expBytes := cf.chunks*len(`data: {"id":"gen-1","object":"chat.completion.chunk","created":1,"model":"m",`+
		`"choices":[{"index":0,"delta":{"content":"tok"},"finish_reason":null}]}`+"\n\n") + len(usageEnd)
	// The comment-first shape: a proxy may hold the comment back (orpoll does), the fake sends it.
	commentBytes := 0
	if cf.processing {
		commentBytes = len(": OPENROUTER PROCESSING\n\n")
	}
	var ttfc, total, late, connect []float64
	complete, lateOver1, badBytes, short, slowConnect := 0, 0, 0, 0, 0
	statuses := map[string]int{}
	errs := map[string]int{}
	for _, r := range rs {
		statuses[fmt.Sprint(r.status)]++
		if r.err != "" {
			errs[r.err]++
		}
		if r.connect >= 0 {
			connect = append(connect, r.connect)
			if r.connect > 0.9 { // ~1 s = a dropped SYN retried: the listen queue overflowed
				slowConnect++
			}
		}
		if r.ttfc > 0 {
			ttfc = append(ttfc, r.ttfc)
		}
		if r.status != 200 {
			continue
		}
		ok := r.done && r.chunks == cf.chunks && r.err == ""
		if r.chunks < cf.chunks {
			short++
		}
		if r.bytes != expBytes && r.bytes != expBytes+commentBytes {
			badBytes++
		}
		if !ok {
			continue
		}
		complete++
		total = append(total, r.total)
		late = append(late, r.total-expected)
		if r.total-expected > 1 {
			lateOver1++
		}
	}
	// Keep the 8 most frequent error texts.
	type kv struct {
		k string
		v int
	}
	var top []kv
	for k, v := range errs {
		top = append(top, kv{k, v})
	}
	sort.Slice(top, func(i, j int) bool { return top[i].v > top[j].v })
	topErrs := map[string]int{}
	for i := 0; i < len(top) && i < 8; i++ {
		topErrs[top[i].k] = top[i].v
	}
	return map[string]any{
		"url": cf.url, "c": cf.c, "n": cf.n, "chunks": cf.chunks, "interval_ms": cf.interval,
		"ramp_ms": cf.rampMs, "expected_ms": expected * 1000, "wall_s": wall,
		"streams_per_s": float64(complete) / wall, "complete": complete,
		"incomplete": cf.n - complete, "short_streams": short, "byte_mismatch": badBytes,
		"late_over_1s": lateOver1, "connect_over_900ms": slowConnect, "statuses": statuses, "errors": topErrs,
		"ttfc_ms": dist(ttfc), "total_ms": dist(total), "late_ms": dist(late),
		"connect_ms": dist(connect),
	}
}
