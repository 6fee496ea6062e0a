package demo

import "errors"

var errorsIs = errors.Is
