package collective

import "fmt"

// Op is a reduction operator.
type Op uint8

const (
	Sum  Op = 1 + iota
	Avg     // sum, then divide by the group size (integers truncate toward zero)
	Min     //
	Max     //
	Prod    //
)

// Ops lists every reduction.
var Ops = []Op{Sum, Avg, Min, Max, Prod}

func (o Op) String() string {
	switch o {
	case Sum:
		return "sum"
	case Avg:
		return "avg"
	case Min:
		return "min"
	case Max:
		return "max"
	case Prod:
		return "prod"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// ParseOp accepts the names String prints.
func ParseOp(s string) (Op, error) {
	for _, o := range Ops {
		if o.String() == s {
			return o, nil
		}
	}
	return 0, fmt.Errorf("unknown reduction %q (want sum, avg, min, max or prod)", s)
}

// Supports reports whether reducing d with o is defined. Every pair is today;
// the check stays at the call so that a future dtype (say, 8-bit floats
// without a product) is refused with an error instead of a wrong answer.
func Supports(d DType, o Op) bool {
	return d.Size() > 0 && o >= Sum && o <= Prod
}
