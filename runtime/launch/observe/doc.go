// Package observe turns the launcher's snapshots of its workers into
// Prometheus metrics, alerts and a status page, served on
// `ringo launch --metrics-addr`.
package observe
