module github.com/superscaled/sss/browsertest

go 1.26.0

require (
	github.com/chromedp/chromedp v0.23.0
	github.com/superscaled/sss v0.0.0-00010101000000-000000000000
	go.uber.org/goleak v1.3.0
)

require (
	github.com/chromedp/cdproto v0.159.0 // indirect
	github.com/coder/websocket v1.8.15 // indirect
	github.com/go-json-experiment/json v0.0.0-20260213210345-44df1a37e875 // indirect
	golang.org/x/time v0.16.0 // indirect
)

replace github.com/superscaled/sss => ../
