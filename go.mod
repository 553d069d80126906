module github.com/ringo-ml/ringo

go 1.26

require github.com/cespare/xxhash/v2 v2.3.0

require github.com/klauspost/compress v1.20.4
