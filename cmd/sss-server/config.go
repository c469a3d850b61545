package main

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"
)

// config is the server's configuration: every field is a flag and an
// environment variable (SSS_ and the flag's name in upper case, '-' as
// '_'); a flag given on the command line wins over the environment.
type config struct {
	addr  string
	path  string
	drain time.Duration

	// Scaler: memory unless redis (and mongo) or nats URLs are given.
	natsURL    string
	natsPrefix string
	natsMsgs   int
	redisURL   string
	mongoURL   string
	mongoDB    string
	prefix     string
	history    int
	historyAge time.Duration

	// Connections.
	origins     []string
	maxMessage  int
	maxSubs     int
	pingEvery   time.Duration
	askTimeout  time.Duration
	rate        float64
	burst       int
	presence    []string
	joinLeave   []string
	clientPub   []string
	publicChans []string
	lossy       []string

	// Authentication.
	jwtSecret   string
	jwtKeyFile  string
	jwtIssuer   string
	jwtAudience string
	anonymous   bool
	connectURL  string
	connectTTL  time.Duration
	apiKey      string

	logLevel string
}

// errHelp: -help was asked and answered.
var errHelp = errors.New("help")

// parseConfig reads flags from args and the environment.
func parseConfig(args []string, getenv func(string) string) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("sss-server", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `sss-server: a standalone sss server (WebSocket protocol sss.v1, HTTP API).

Usage: sss-server [flags]

Every flag can also be set by an environment variable: SSS_ and the flag's
name in upper case with '-' as '_' (e.g. -redis-url is SSS_REDIS_URL).
A flag on the command line wins. Lists are comma-separated. Channel
patterns: "news" (that channel), "news.*" (every channel below news), "*"
(every channel).

Flags:
`)
		fs.PrintDefaults()
	}
	str := func(p *string, name, def, usage string) { fs.StringVar(p, name, def, usage) }
	dur := func(p *time.Duration, name string, def time.Duration, usage string) {
		fs.DurationVar(p, name, def, usage)
	}
	num := func(p *int, name string, def int, usage string) { fs.IntVar(p, name, def, usage) }
	var origins, presence, joinLeave, clientPub, public, lossy string
	str(&c.addr, "addr", ":8000", "listen address")
	str(&c.path, "path", "/ws", "path of the WebSocket endpoint")
	dur(&c.drain, "drain-timeout", 10*time.Second, "on SIGTERM/SIGINT, how long to wait for connections to close and handlers to finish")
	str(&c.redisURL, "redis-url", "", "Redis URL (redis://host:6379/0): use the Redis+MongoDB scaler (with -mongo-url) instead of the in-memory one")
	str(&c.mongoURL, "mongo-url", "", "MongoDB URI (mongodb://host:27017) for sessions' subscriptions; requires -redis-url")
	str(&c.mongoDB, "mongo-db", "sss", "MongoDB database")
	str(&c.prefix, "redis-prefix", "sss:", "prefix of the Redis keys and channels")
	str(&c.natsURL, "nats-url", "", "NATS server URLs, comma-separated (nats://host:4222), JetStream enabled: use the NATS scaler instead of the in-memory one")
	str(&c.natsPrefix, "nats-prefix", "sss", "first token of the NATS subjects and start of the stream and bucket names")
	num(&c.natsMsgs, "nats-history-messages", 1_000_000, "publications the NATS history stream keeps in all (-history-age bounds them too; -history-size does not apply)")
	num(&c.history, "history-size", 1000, "publications kept per channel for catch-up (0: no history)")
	dur(&c.historyAge, "history-age", 5*time.Minute, "how long publications are kept for catch-up")
	str(&origins, "origins", "", "host patterns of cross-origin browsers allowed to connect (e.g. app.example.com,*.example.com)")
	num(&c.maxMessage, "max-message", 64<<10, "largest message a client may send, in bytes")
	num(&c.maxSubs, "max-subscriptions", 256, "subscriptions per connection")
	dur(&c.pingEvery, "ping-interval", 25*time.Second, "how often the server pings each client")
	dur(&c.askTimeout, "ask-timeout", 10*time.Second, "timeout of asks and of the -connect-url call")
	fs.Float64Var(&c.rate, "rate", 0, "requests per second per connection (0: unlimited)")
	num(&c.burst, "burst", 50, "burst of -rate")
	str(&presence, "presence", "", "channel patterns that keep presence (who is subscribed)")
	str(&joinLeave, "join-leave", "", "channel patterns that keep presence and announce joins and leaves")
	str(&clientPub, "client-publish", "", "channel patterns clients may publish to (besides a token's publish claim)")
	str(&public, "public", "", "channel patterns anyone connected may subscribe to (besides a token's channels claim)")
	str(&lossy, "lossy", "", "channel patterns whose publications may be dropped for a slow client instead of disconnecting it")
	str(&c.jwtSecret, "jwt-secret", "", "HMAC secret that signs connection tokens (HS256/384/512)")
	str(&c.jwtKeyFile, "jwt-public-key", "", "PEM file of the public key that signs connection tokens (RS*, PS*, ES*, EdDSA)")
	str(&c.jwtIssuer, "jwt-issuer", "", "required iss claim of connection tokens")
	str(&c.jwtAudience, "jwt-audience", "", "required aud claim of connection tokens")
	fs.BoolVar(&c.anonymous, "anonymous", false, "accept connections without credentials (anonymous, no user id)")
	str(&c.connectURL, "connect-url", "", "your app's endpoint that authenticates a connection from its cookies and headers (see README)")
	dur(&c.connectTTL, "connect-session-ttl", 0, "with -connect-url, how long its answer is valid when it sets no expiry (0: as long as the connection)")
	str(&c.apiKey, "api-key", "", "key of the HTTP API (Authorization: apikey <key>); without one the API is off")
	str(&c.logLevel, "log-level", "info", "debug, info, warn or error")

	// The environment first, so that flags override it.
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		name := "SSS_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v := getenv(name); v != "" {
			if err := f.Value.Set(v); err != nil && envErr == nil {
				envErr = fmt.Errorf("%s=%q: %v", name, v, err)
			}
		}
	})
	if envErr != nil {
		return nil, envErr
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, errHelp
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	c.origins = list(origins)
	c.presence, c.joinLeave, c.clientPub, c.publicChans, c.lossy = list(presence), list(joinLeave), list(clientPub), list(public), list(lossy)
	return c, c.validate()
}

func (c *config) validate() error {
	var errs []error
	if c.mongoURL != "" && c.redisURL == "" {
		errs = append(errs, errors.New("-mongo-url needs -redis-url"))
	}
	if c.natsURL != "" && c.redisURL != "" {
		errs = append(errs, errors.New("give -nats-url or -redis-url, not both"))
	}
	if c.natsURL != "" && c.natsMsgs <= 0 {
		errs = append(errs, errors.New("-nats-history-messages must be positive"))
	}
	if c.jwtSecret != "" && c.jwtKeyFile != "" {
		errs = append(errs, errors.New("give -jwt-secret or -jwt-public-key, not both"))
	}
	if c.jwtSecret == "" && c.jwtKeyFile == "" && c.connectURL == "" && !c.anonymous {
		errs = append(errs, errors.New("no way to authenticate connections: give -jwt-secret, -jwt-public-key or -connect-url, or -anonymous"))
	}
	if !strings.HasPrefix(c.path, "/") {
		errs = append(errs, fmt.Errorf("-path %q must start with /", c.path))
	}
	for _, p := range [][]string{c.presence, c.joinLeave, c.clientPub, c.publicChans, c.lossy} {
		for _, pat := range p {
			if err := validPattern(pat); err != nil {
				errs = append(errs, err)
			}
		}
	}
	switch c.logLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("-log-level %q: debug, info, warn or error", c.logLevel))
	}
	return errors.Join(errs...)
}

func list(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}
