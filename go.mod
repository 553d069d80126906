module github.com/ringo-ml/ringo

go 1.26
