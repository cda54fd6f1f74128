// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// What the contract tests deploy, call and watch.
contract Counter {
    uint256 public count;
    event Bumped(address indexed by, uint256 count, string note);

    constructor(uint256 start) {
        count = start;
    }

    function bump(string calldata note) external {
        count += 1;
        emit Bumped(msg.sender, count, note);
    }
}

/// A constructor that reverts unless told not to.
contract Reverter {
    constructor(bool ok) {
        require(ok, "Reverter: not ok");
    }
}

/// Abstract: no bytecode.
abstract contract Base {
    function f() external virtual;
}
